"""Dense Adversary Generation (DAG): attacking every pixel of a segmentation at once.

Xie thesis, ch. 2 (Xie et al., "Adversarial Examples for Semantic
Segmentation and Object Detection", ICCV 2017). An image X holds N
recognition targets t_1..t_N, for segmentation its pixels, each with a true
label l_n; f(X, t_n) in R^C are the logits of target n. Every target gets an
adversarial label l'_n = pi(l_n), where pi is a random permutation of the C
classes without fixed point (a derangement), drawn per image. DAG minimises
(eq. 2.1)

  L(X, T, L, L') = sum_n [f_{l_n}(X, t_n) - f_{l'_n}(X, t_n)]

by normalised gradient steps, restricted at every iteration m to the
*active set* T_m = {t_n : argmax_c f_c(X_m, t_n) = l_n} of targets still
predicted right (Algorithm 1):

  1  X_0 <- X, r <- 0, m <- 0
  2  while m < M0 and T_m is not empty:
  3    T_m   = {t_n | argmax_c f_c(X_m, t_n) = l_n}
  4    r_m   = sum_{t_n in T_m} [grad_X f_{l'_n}(X_m, t_n) - grad_X f_{l_n}(X_m, t_n)]   (eq. 2.2)
  5    r'_m  = gamma r_m / ||r_m||_inf                                                     (eq. 2.3)
  6    r     <- r + r'_m
  7    X_{m+1} <- X_m + r'_m;  m <- m + 1

So the step ascends sum_{T_m} (f_{l'} - f_l): it raises the adversarial
logits and lowers the true ones, i.e. descends L. The thesis uses gamma = 0.5
on images in 0-255 intensity units and M0 = 200 for segmentation.

How this module reads Algorithm 1, and where it has to choose:

* Active set and the stopping test. T_m is computed on X_m (line 3) and the
  image stops *before* the update when it is empty, which is what the while
  test means; taken literally, line 5 would divide by ||0||_inf. An image
  also stops when ||r_m||_inf = 0 with a non-empty active set (the model is
  flat in the input there), instead of dividing by zero. `iterations` counts
  the updates made (lines 5-7), so an image whose active set is empty on the
  clean input reports 0 and is returned unchanged.
* Ignored pixels (label < 0) are never targets.
* Background. The thesis' footnote 1: "we keep targets with ground-truth
  class label background unchanged when generating adversarial examples".
  Here that means: pixels labelled `background_class` are not in T, so they
  are never in any active set T_m, contribute nothing to r_m, and do not keep
  an image running; their predictions may still change as a side effect of
  the perturbation. The derangement is still over all C classes, so a
  foreground pixel may be pushed toward the background class.
  `background_class=-1` attacks every valid pixel.
* Derangements. `random_derangements` draws, per image, a permutation
  uniformly from the C! permutations (`jax.random.permutation` on a key
  folded with the attempt number) and redraws until it has no fixed point.
  Each draw succeeds with probability D_C / C! (1/2 for C = 2, close to 1/e
  after), so about e draws are needed and the result is uniform over the
  derangements of C classes. Images draw from `jax.random.split(rng, batch)`.
* The box. Images in advjax live in [0, 1] and the thesis truncates the
  final image to the valid range (Trunc). Here every iterate is kept in the
  box, X_{m+1} = clip(X_m + r'_m, 0, 1), and r is X_final - X: the active set
  of the last iteration is then measured on the image that is returned, so an
  image that stops with an empty active set is fooled on every target. There
  is no epsilon ball.
* Units. gamma is configured in 0-255 units, like every size in advjax
  (0.5 means 0.5/255 on the [0, 1] scale), converted once by `threat.to_unit`.
* Batching. All images run together in one `lax.while_loop`, which ends when
  every image has stopped or M0 iterations have run; an image that has
  stopped keeps its X_m. Each image follows its own gradient, which assumes
  `logits_fn` treats the images of a batch independently (BatchNorm with
  running statistics, `bn_mode='eval'`).

Diagnostics of sec. 2.3.3 and 2.3.5 come with the result:

* Perceptibility p = (1/K sum_k ||r_k||_2^2)^(1/2), K the number of pixels
  and r_k the perturbation of pixel k as a vector over the colour channels,
  with intensities on the [0, 1] scale, as the thesis reports it (2.5e-3 to
  3.0e-3 for its segmentation networks).
* PERM, the control of table 2.1: the perturbation with its rows and its
  columns randomly permuted (one permutation of the H rows and one of the W
  columns per image), added to the clean image (and clipped to the box). It
  has the magnitude of r but not its spatial structure.

`dag` returns all of these; `attack` is the plain `(logits_fn, x, y, rng,
cfg) -> x_adv` form of the other adversaries.
"""

import dataclasses
import functools
import math
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from advjax.cpu import compilation
from advjax import typed_config
from advjax.attacks import threat
from advjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DAGConfig:
  """Hyper-parameters of DAG; frozen and hashable, a valid jit static argument.

  Attributes:
    gamma: step length ||r'_m||_inf in 0-255 pixel units (thesis: 0.5, i.e. 0.5/255).
    num_steps: M0, the most updates per image (thesis: 200 for segmentation).
    background_class: label whose pixels are not attacked (not targets);
      -1 attacks every valid pixel.
  """
  gamma: float = 0.5
  num_steps: int = 200
  background_class: int = 0

  RENAMED: ClassVar[dict[str, str]] = {"max_iter": "num_steps"}

  def __post_init__(self):
    def check(ok, field, why):
      if not ok:
        raise ConfigError(f"{field}={getattr(self, field)!r}: {why}")

    check(isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma > 0, "gamma",
          "must be a finite number > 0 (0-255 pixel units)")
    check(isinstance(self.num_steps, int) and not isinstance(self.num_steps, bool) and self.num_steps >= 0,
          "num_steps", "must be an int >= 0")
    check(isinstance(self.background_class, int) and not isinstance(self.background_class, bool)
          and self.background_class >= -1, "background_class", "must be a class index, or -1 for none")

  @classmethod
  def from_config(cls, config) -> "DAGConfig":
    """Builds a config from a ConfigDict or dict; ConfigError names a bad or unknown field."""
    return typed_config.from_mapping(cls, config, "DAG config")


class DAGResult(NamedTuple):
  """What `dag` returns, per image.

  Attributes:
    x_adv: [batch, H, W, C] adversarial images X + r in [0, 1].
    perturbation: [batch, H, W, C] r = x_adv - x on the [0, 1] scale.
    iterations: [batch] int32 updates made (0 .. num_steps).
    remaining: [batch] int32 size of the active set on x_adv (0 = every
      target fooled).
    perceptibility: [batch] float32 p = sqrt(mean over pixels of the squared
      L2 norm over channels of r), on the [0, 1] scale.
    perm_perturbation: [batch, H, W, C] r with its rows and columns randomly
      permuted (per image).
    x_perm: [batch, H, W, C] clip(x + perm_perturbation, 0, 1), the PERM control.
    adversarial_labels: [batch, ...] int32 the l'_n used (-1 where the label is ignored).
  """
  x_adv: jax.Array
  perturbation: jax.Array
  iterations: jax.Array
  remaining: jax.Array
  perceptibility: jax.Array
  perm_perturbation: jax.Array
  x_perm: jax.Array
  adversarial_labels: jax.Array


def random_derangements(rng: jax.Array, batch: int, num_classes: int) -> jax.Array:
  """Per image a permutation of the classes without fixed point, uniform over all such.

  Rejection sampling: per image, draw uniform permutations (`fold_in(key, t)`
  for attempt t) until one has pi(c) != c for every c.

  Args:
    rng: PRNG key; image b uses `jax.random.split(rng, batch)[b]`.
    batch: number of images (static).
    num_classes: C >= 2 (static).

  Returns:
    [batch, C] int32; row b is pi_b as a lookup table (pi_b(c) = row[c]).

  Raises:
    ConfigError: C < 2 (no derangement exists).
  """
  if num_classes < 2:
    raise ConfigError(f"DAG needs at least 2 classes to draw adversarial labels, got {num_classes}")
  identity = jnp.arange(num_classes, dtype=jnp.int32)

  def one(key):
    def draw(t):
      return jax.random.permutation(jax.random.fold_in(key, t), num_classes).astype(jnp.int32)

    def has_fixed_point(carry):
      return jnp.any(carry[1] == identity)

    def redraw(carry):
      t, _ = carry
      return t + 1, draw(t + 1)

    return lax.while_loop(has_fixed_point, redraw, (jnp.int32(0), draw(0)))[1]

  return jax.vmap(one)(jax.random.split(rng, batch))


def adversarial_labels(labels: jax.Array, permutations: jax.Array) -> jax.Array:
  """l'_n = pi_b(l_n) for every position of image b; ignored positions (label < 0) stay -1.

  Args:
    labels: [batch, ...] int labels, -1 ignored.
    permutations: [batch, C] lookup tables (`random_derangements`).

  Returns:
    [batch, ...] int32 adversarial labels.
  """
  flat = labels.reshape(labels.shape[0], -1)
  mapped = jnp.take_along_axis(permutations, jnp.maximum(flat, 0), axis=1).reshape(labels.shape)
  return jnp.where(labels >= 0, mapped, -1).astype(jnp.int32)


def targets_mask(labels: jax.Array, background_class: int) -> jax.Array:
  """The target set T: valid positions (label >= 0) not labelled `background_class` (-1: none)."""
  keep = labels >= 0
  if background_class >= 0:
    keep = keep & (labels != background_class)
  return keep


def perceptibility(perturbation: jax.Array) -> jax.Array:
  """p = sqrt((1/K) sum_k ||r_k||_2^2) per image (sec. 2.3.5).

  Args:
    perturbation: [batch, H, W, C] on the scale p is wanted in ([0, 1] in the thesis).

  Returns:
    [batch] p; K = H * W pixels, r_k the C-vector of pixel k.
  """
  per_pixel = jnp.sum(jnp.square(perturbation), axis=-1)
  return jnp.sqrt(jnp.mean(per_pixel.reshape(per_pixel.shape[0], -1), axis=1))


def permute_rows_cols(rng: jax.Array, perturbation: jax.Array) -> jax.Array:
  """The PERM control's perturbation: per image, rows and columns shuffled.

  Args:
    rng: PRNG key; image b uses `jax.random.split(rng, batch)[b]`, split again
      into a row and a column key.
    perturbation: [batch, H, W, C].

  Returns:
    [batch, H, W, C] with out[b, i, j] = perturbation[b, sigma_b(i), tau_b(j)]
    for uniform random permutations sigma_b of the rows and tau_b of the columns.
  """
  height, width = perturbation.shape[1], perturbation.shape[2]

  def one(key, r):
    k_rows, k_cols = jax.random.split(key)
    rows = jax.random.permutation(k_rows, height)
    cols = jax.random.permutation(k_cols, width)
    return r[rows][:, cols]

  return jax.vmap(one)(jax.random.split(rng, perturbation.shape[0]), perturbation)


def perm_control(rng: jax.Array, x: jax.Array, perturbation: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(permuted perturbation, clip(x + permuted perturbation, 0, 1)) for the PERM column of table 2.1."""
  permuted = permute_rows_cols(rng, perturbation)
  return permuted, threat.apply(x, permuted)


def _per_image(v: jax.Array, ndim: int) -> jax.Array:
  """[batch] -> [batch, 1, ..., 1] (`ndim` axes in all) for broadcasting a per-image value."""
  return v.reshape((-1,) + (1,) * (ndim - 1))


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg"))
def dag(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, rng: jax.Array,
        cfg: DAGConfig = DAGConfig(), targets: jax.Array | None = None) -> DAGResult:
  """Algorithm 1 on a batch, each image stopping on its own.

  Args:
    logits_fn: `x -> [batch, ..., classes]` logits (per pixel for
      segmentation); static, so reuse one object to avoid recompiles. It must
      treat the images of a batch independently.
    x: [batch, height, width, channels] clean images in [0, 1].
    y: [batch, height, width] true label maps, -1 ignored (or [batch] class
      labels: then the image is the single target).
    rng: PRNG key: `split(rng)` gives the derangement key and the PERM key.
    cfg: `DAGConfig` (static).
    targets: optional adversarial labels l' shaped like y, overriding the
      random derangement (a target equal to the label on a target pixel keeps
      that pixel active until M0).

  Returns:
    `DAGResult`.

  Raises:
    ConfigError: fewer than 2 classes, or `background_class` not below the
      number of classes.
  """
  num_classes = jax.eval_shape(logits_fn, x).shape[-1]
  if cfg.background_class >= num_classes:
    raise ConfigError(f"DAG config field 'background_class'={cfg.background_class}: the model has only "
                      f"{num_classes} classes")
  k_labels, k_perm = jax.random.split(rng)
  if targets is None:
    targets = adversarial_labels(y, random_derangements(k_labels, x.shape[0], num_classes))
  else:
    targets = jnp.where(y >= 0, targets, -1).astype(jnp.int32)
  attackable = targets_mask(y, cfg.background_class)
  gamma = threat.to_unit(cfg.gamma)
  label_axes = tuple(range(1, y.ndim))

  def active_set(logits):
    return (jnp.argmax(logits, axis=-1) == y) & attackable

  def count(active):
    return jnp.sum(active, axis=label_axes, dtype=jnp.int32)

  def keep_going(carry):
    m, _, _, done = carry
    return (m < cfg.num_steps) & ~jnp.all(done)

  def update(carry):
    m, x_m, iterations, done = carry
    logits, vjp = jax.vjp(logits_fn, x_m)
    active = active_set(logits)
    # d/dX of sum over T_m of f_{l'} - f_l (eq. 2.2) is one vector-Jacobian product.
    direction = jax.nn.one_hot(targets, num_classes, dtype=logits.dtype) - jax.nn.one_hot(
        y, num_classes, dtype=logits.dtype)
    (r_m,) = vjp(direction * active[..., None].astype(logits.dtype))
    r_inf = jnp.max(jnp.abs(r_m), axis=tuple(range(1, x.ndim)))
    move = ~done & (count(active) > 0) & (r_inf > 0)
    step = gamma * r_m / _per_image(jnp.where(r_inf > 0, r_inf, 1.0), x.ndim)
    x_next = jnp.where(_per_image(move, x.ndim), jnp.clip(x_m + step, 0.0, 1.0), x_m)
    return m + 1, x_next, iterations + move.astype(jnp.int32), done | ~move

  batch = x.shape[0]
  init = (jnp.int32(0), x, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
  _, x_adv, iterations, _ = lax.while_loop(keep_going, update, init)
  r = x_adv - x
  permuted, x_perm = perm_control(k_perm, x, r)
  return DAGResult(x_adv=x_adv, perturbation=r, iterations=iterations,
                   remaining=count(active_set(logits_fn(x_adv))), perceptibility=perceptibility(r),
                   perm_perturbation=permuted, x_perm=x_perm, adversarial_labels=targets)


def attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, rng: jax.Array,
           cfg: DAGConfig = DAGConfig(), targets: jax.Array | None = None) -> jax.Array:
  """DAG as a plain attack: the adversarial images of `dag` ([batch, H, W, C] in [0, 1])."""
  return dag(logits_fn, x, y, rng, cfg, targets).x_adv
