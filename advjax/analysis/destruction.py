"""Destruction rate of adversarial examples under image transformations (sec. 3.3, appendix F).

Following Kurakin et al. (2017a), with C(x, y) = 1 when the classifier
labels x as y, the destruction rate of a transformation T on examples
(x^k, y^k) with adversarial versions x^k_adv is

      sum_k C(x^k, y^k) (1 - C(x^k_adv, y^k)) C(T(x^k_adv), y^k)
  d = ----------------------------------------------------------
            sum_k C(x^k, y^k) (1 - C(x^k_adv, y^k))

the fraction of the *effective* adversarial examples (correct when clean,
wrong when attacked) that the transformation makes correct again. T acts on
the adversarial image only, never on the clean one. Figures 5, 14 and 15
plot d against the strength of four transformations, for models of several
epochs and for the basic iterative method, FGSM and DeepFool:

  'brightness'  T(x) = clip(x + b / 255): additive, b in 0-255 units
  'contrast'    T(x) = clip(c x) (Kurakin's multiplicative change), or
                clip(m + c (x - m)) with m the image's mean (contrast_center='mean')
  'blur'        Gaussian blur of standard deviation sigma (pixels), a
                separable kernel of radius ceil(3 sigma) normalised to sum 1
                (OpenCV's choice for 8-bit images), reflect-101 borders
  'noise'       T(x) = clip(x + sigma / 255 n), n ~ N(0, I); example k draws
                its n from fold_in(rng, k), the same n for every sigma, so
                results do not depend on the batch size

Every transformed image is clipped to [0, 1]. The axes of the paper's
figures are not in its text, which only contrasts weak noise (sigma < 5) with
strong noise (sigma > 7) in 0-255 units; `DEFAULT_GRIDS` therefore covers
mild to strong changes of each kind (brightness +-30 of 255, contrast x0.6 to
x1.4, blur sigma 0.5 to 2 pixels, noise sigma 1 to 20), and any grid can be
passed instead. Every strength of a transformation runs in one compiled
`lax.map`. A rate with no effective example is NaN.
"""

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.cpu import compilation
from advjax.analysis import epochs as epochs_lib
from advjax.errors import ConfigError, DataError, unknown_name

TRANSFORMS = ("brightness", "contrast", "blur", "noise")
CONTRAST_CENTERS = ("zero", "mean")
BLUR_TRUNCATE = 3.0

DEFAULT_GRIDS = {
    # Added to every pixel, 0-255 units.
    "brightness": (-30.0, -20.0, -10.0, -5.0, 5.0, 10.0, 20.0, 30.0),
    # Multiplicative factor; < 1 lowers, > 1 raises contrast.
    "contrast": (0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4),
    # Standard deviation of the Gaussian blur in pixels.
    "blur": (0.5, 0.75, 1.0, 1.5, 2.0),
    # Standard deviation of the additive noise, 0-255 units.
    "noise": (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0),
}


def brightness(x: jax.Array, delta) -> jax.Array:
  """clip(x + delta / 255, 0, 1); x [..., H, W, C], delta in 0-255 units (may be traced)."""
  return jnp.clip(x + delta / 255.0, 0.0, 1.0)


def contrast(x: jax.Array, factor, center: str = "zero") -> jax.Array:
  """Contrast change by `factor` (may be traced), clipped to [0, 1].

  Args:
    x: [batch, H, W, C] images in [0, 1].
    factor: multiplicative factor c.
    center: 'zero' gives c x (Kurakin et al.); 'mean' gives m + c (x - m) with
      m the mean of each image over H, W and C, which keeps its brightness.

  Returns:
    Transformed images, shape of `x`.
  """
  if center == "zero":
    return jnp.clip(x * factor, 0.0, 1.0)
  if center == "mean":
    m = jnp.mean(x, axis=(-3, -2, -1), keepdims=True)
    return jnp.clip(m + factor * (x - m), 0.0, 1.0)
  raise unknown_name("contrast center", center, CONTRAST_CENTERS)


def blur_radius(sigma: float) -> int:
  """Kernel radius ceil(3 sigma) (at least 1) of a Gaussian of std `sigma` pixels."""
  if not sigma > 0:
    raise ConfigError(f"blur sigma={sigma!r}: must be > 0")
  return max(1, int(math.ceil(BLUR_TRUNCATE * sigma - 1e-9)))


def gaussian_kernel(sigma, radius: int | None = None) -> jax.Array:
  """1-D Gaussian kernel, normalised to sum 1.

  Args:
    sigma: standard deviation in pixels (may be traced when `radius` is given).
    radius: static half-width R of the returned kernel; taps beyond
      ceil(3 sigma) are zero, so a larger R gives the same kernel padded.
      None uses `blur_radius(sigma)`.

  Returns:
    [2R + 1] float32 weights w_k proportional to exp(-k^2 / (2 sigma^2)), k = -R..R.
  """
  if radius is None:
    radius = blur_radius(float(sigma))
  k = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  own_radius = jnp.maximum(jnp.ceil(BLUR_TRUNCATE * sigma - 1e-6), 1.0)
  w = jnp.where(jnp.abs(k) <= own_radius, jnp.exp(-0.5 * jnp.square(k / sigma)), 0.0)
  return w / jnp.sum(w)


def _blur_axis(x, kernel, axis):
  r = (kernel.shape[0] - 1) // 2
  pad = [(0, 0)] * 4
  pad[axis] = (r, r)
  # numpy's 'reflect' mirrors without repeating the edge (OpenCV's BORDER_REFLECT_101).
  x_pad = jnp.pad(x, pad, mode="reflect")
  c = x.shape[-1]
  taps = (kernel.shape[0], 1) if axis == 1 else (1, kernel.shape[0])
  w = jnp.broadcast_to(kernel.reshape(taps + (1, 1)), taps + (1, c)).astype(x.dtype)
  return lax.conv_general_dilated(x_pad, w, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=c)


def gaussian_blur(x: jax.Array, sigma, radius: int | None = None) -> jax.Array:
  """Separable Gaussian blur of each channel, clipped to [0, 1].

  Args:
    x: [batch, H, W, C] images in [0, 1].
    sigma: standard deviation in pixels (traced only with a static `radius`).
    radius: kernel half-width (static); None uses `blur_radius(sigma)`. It
      must be smaller than H and W (reflect padding).

  Returns:
    [batch, H, W, C] blurred images: rows, then columns, convolved with
    `gaussian_kernel(sigma, radius)`.
  """
  if radius is None:
    radius = blur_radius(float(sigma))
  if radius >= x.shape[1] or radius >= x.shape[2]:
    raise ConfigError(f"blur radius {radius} needs images larger than {radius} pixels, "
                      f"got {x.shape[1]}x{x.shape[2]}")
  kernel = gaussian_kernel(sigma, radius)
  return jnp.clip(_blur_axis(_blur_axis(x, kernel, 1), kernel, 2), 0.0, 1.0)


def standard_noise(rng: jax.Array, index: jax.Array, image_shape) -> jax.Array:
  """n_k ~ N(0, I) of shape [batch, *image_shape], drawn from fold_in(rng, index_k)."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), tuple(image_shape)))(
      index)


def gaussian_noise(x: jax.Array, sigma, rng: jax.Array,
                   index: jax.Array | None = None) -> jax.Array:
  """clip(x + sigma / 255 n, 0, 1) with n from `standard_noise`.

  Args:
    x: [batch, H, W, C] images in [0, 1].
    sigma: standard deviation in 0-255 units (may be traced).
    rng: PRNG key.
    index: [batch] int global example indices (default 0..batch-1), so an
      example's noise does not depend on how the data is batched.

  Returns:
    [batch, H, W, C] noisy images.
  """
  if index is None:
    index = jnp.arange(x.shape[0])
  noise = standard_noise(rng, index, x.shape[1:]).astype(x.dtype)
  return jnp.clip(x + sigma / 255.0 * noise, 0.0, 1.0)


def apply_transform(name: str, x: jax.Array, strength, rng: jax.Array | None = None,
                    index: jax.Array | None = None, *, radius: int | None = None,
                    contrast_center: str = "zero") -> jax.Array:
  """One transformation of `TRANSFORMS` at one strength.

  Args:
    name: 'brightness', 'contrast', 'blur' or 'noise'.
    x: [batch, H, W, C] images in [0, 1].
    strength: b (0-255), c, sigma (pixels) or sigma (0-255); see the module doc.
    rng: PRNG key ('noise' only).
    index: [batch] example indices ('noise' only).
    radius: static blur radius ('blur' with a traced sigma).
    contrast_center: 'zero' or 'mean' ('contrast' only).

  Returns:
    Transformed images in [0, 1], shape of `x`.
  """
  if name == "brightness":
    return brightness(x, strength)
  if name == "contrast":
    return contrast(x, strength, contrast_center)
  if name == "blur":
    return gaussian_blur(x, strength, radius)
  if name == "noise":
    if rng is None:
      raise ConfigError("transform 'noise' needs an rng")
    return gaussian_noise(x, strength, rng, index)
  raise unknown_name("transform", name, TRANSFORMS)


def destruction_rate(clean_correct, adv_correct, transformed_correct) -> tuple[float, int]:
  """Kurakin et al.'s d from per-example correctness.

  Args:
    clean_correct: [N] bool C(x^k, y^k).
    adv_correct: [N] bool C(x^k_adv, y^k).
    transformed_correct: [N] or [N, S] bool C(T(x^k_adv), y^k), S strengths.

  Returns:
    (d, number of effective examples); d is a float, or [S] for a 2-D
    `transformed_correct`, NaN where no example is effective.
  """
  clean = np.asarray(clean_correct, bool)
  adv = np.asarray(adv_correct, bool)
  trans = np.asarray(transformed_correct, bool)
  if clean.shape != adv.shape or trans.shape[0] != clean.shape[0]:
    raise DataError(f"destruction_rate: shapes {clean.shape}, {adv.shape}, {trans.shape} differ")
  effective = clean & ~adv
  num = int(effective.sum())
  mask = effective.reshape(effective.shape + (1,) * (trans.ndim - 1))
  if num:
    rate = np.sum(trans & mask, axis=0) / np.float64(num)
  else:
    rate = np.full(trans.shape[1:], np.nan)
  return (float(rate) if np.ndim(rate) == 0 else rate), num


@functools.partial(compilation.jit, static_argnames=("logits_fn", "name", "radius", "contrast_center"))
def _correct_under_transform(logits_fn, name, x, x_adv, y, index, strengths, rng, radius,
                             contrast_center):
  def correct(images):
    return jnp.argmax(logits_fn(images), axis=-1) == y

  def one(strength):
    return correct(apply_transform(name, x_adv, strength, rng, index, radius=radius,
                                   contrast_center=contrast_center))

  return correct(x), correct(x_adv), lax.map(one, strengths).T


def destruction_rates(logits_fn: epochs_lib.LogitsFn, x, x_adv, y, rng: jax.Array,
                      grids: Mapping[str, Sequence[float]] | None = None,
                      batch_size: int | None = None,
                      contrast_center: str = "zero") -> dict[str, np.ndarray]:
  """Destruction rate of one model's adversarial examples for every transform and strength.

  Args:
    logits_fn: the model.
    x: [N, H, W, C] clean images in [0, 1].
    x_adv: [N, H, W, C] their adversarial versions (made against this model).
    y: [N] labels.
    rng: PRNG key of the 'noise' transformation.
    grids: {transform name: strengths}; default `DEFAULT_GRIDS`.
    batch_size: examples per jitted call.
    contrast_center: 'zero' or 'mean', see `contrast`.

  Returns:
    {name: [S] float64 destruction rates, one per strength of its grid}, plus
    'num_effective': a 0-d array, the denominator.

  Raises:
    ConfigError: unknown transform name or empty grid.
  """
  grids = DEFAULT_GRIDS if grids is None else grids
  if np.shape(x) != np.shape(x_adv):
    raise DataError(f"x {np.shape(x)} and x_adv {np.shape(x_adv)} differ in shape")
  index = np.arange(np.shape(x)[0])
  out, num = {}, None
  for name, strengths in grids.items():
    if name not in TRANSFORMS:
      raise unknown_name("transform", name, TRANSFORMS)
    if len(strengths) == 0:
      raise ConfigError(f"grid of transform {name!r} is empty")
    radius = blur_radius(max(strengths)) if name == "blur" else None
    if name == "blur" and min(strengths) <= 0:
      raise ConfigError(f"blur strengths {tuple(strengths)}: sigma must be > 0")
    s = jnp.asarray(strengths, jnp.float32)
    fn = functools.partial(_correct_under_transform, logits_fn, name, strengths=s, rng=rng,
                           radius=radius, contrast_center=contrast_center)
    clean, adv, trans = epochs_lib.map_batched(fn, [x, x_adv, y, index], batch_size)
    out[name], num = destruction_rate(clean, adv, trans)
  out["num_effective"] = np.asarray(num)
  return out


def destruction_study(logits_fns: Sequence[epochs_lib.LogitsFn], x, y, rng: jax.Array,
                      adversaries: Sequence = ("bi", "fgsm", "deepfool"),
                      grids: Mapping[str, Sequence[float]] | None = None,
                      batch_size: int | None = None,
                      contrast_center: str = "zero") -> dict:
  """Figures 5, 14 and 15: destruction rates per adversary, epoch, transform and strength.

  Args:
    logits_fns: T closures (the models of the plotted epochs).
    x: [N, H, W, C] test images in [0, 1].
    y: [N] labels.
    rng: PRNG key; adversary a uses fold_in(rng, a) for the attacks, and the
      noise draws are shared by all epochs and adversaries.
    adversaries: names of `epochs.ADVERSARIES` or attack configs.
    grids: {transform: strengths}; default `DEFAULT_GRIDS`.
    batch_size: examples per jitted call.
    contrast_center: see `contrast`.

  Returns:
    {adversary key: {transform: [T, S] float64, 'num_effective': [T] int}},
    keyed by the name, or by position ('0', '1', ...) for config objects.
  """
  epochs_lib.check_epochs(logits_fns)
  k_attack, k_noise = jax.random.split(rng)
  result = {}
  for a, adversary in enumerate(adversaries):
    key = adversary if isinstance(adversary, str) else str(a)
    sets = epochs_lib.per_epoch_adversarial(logits_fns, x, y, jax.random.fold_in(k_attack, a),
                                            adversary, batch_size)
    per_epoch = [destruction_rates(fn, x, sets[t], y, k_noise, grids, batch_size,
                                   contrast_center) for t, fn in enumerate(logits_fns)]
    result[key] = {name: np.stack([r[name] for r in per_epoch]) for name in per_epoch[0]}
  return result
