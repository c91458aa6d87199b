"""Image synthesis with a segmentation model: inpainting (eq. 6) and generation (eq. 7).

The robust-segmentation paper (secs. 5.2-5.3, after Santurkar et al., 2019)
uses a segmentation network f as the only model of images: a robust f has
perceptually aligned gradients, so descending its loss towards a label map
paints plausible content. With y the ground-truth label map of an image x
and m a binary mask of a corrupted region (1 = corrupted),

  inpainting (eq. 6)   x* = argmin_{x'} CE(f(x'), y) + lambda ||(x' - x) (.) (1 - m)||_2^2
  generation (eq. 7)   x* = argmin_{x'} CE(f(x'), y)

where CE is the per-pixel cross-entropy averaged over the labelled pixels
(pixels labelled -1 are left out; `advjax.tasks.labels.cross_entropy`, the
reduction of every loss in advjax and PyTorch's default), (.) the Hadamard
product, and x' stays in [0, 1]. Both are solved by PGD without an eps ball:

  x'_0 = m (.) mu + (1 - m) (.) x
  x'_{k+1} = clip(x'_k - alpha d_k, 0, 1),   d_k = rule(grad_{x'} L(x'_k))

with rule the sign ('linf') or g / ||g||_2 per image ('l2'), and mu the
per-channel mean of x broadcast over the pixels. Generation is inpainting
with m = 1 everywhere: the penalty vanishes and the start is the mean image
(eq. 7's start, "all pixels the per-channel average of the original
image"), so `generate` calls `inpaint` with a full mask.

Two forms of the constraint on the uncorrupted pixels:

  'soft'  eq. 6 as written: every pixel is free and lambda penalises changes
          outside the mask;
  'hard'  only masked pixels change (lambda unused): the iterate is written
          x' = x + m (.) delta and delta is projected by a
          `threat.ThreatModel` with mask m, so unmasked pixels equal x
          exactly at every step and the gradient is taken in the masked
          subspace (an L2 step spends its whole length inside the mask).

Both run the shared loop (`core.optimize`) on delta = x' - x, maximising
-L; the threat model is an L-inf ball of radius 1 (255 in 0-255 units),
which holds the whole box, so only the box (and, for 'hard', the mask) binds.

The mean mu. The paper fills the corrupted region with "the per-channel
average pixel value of the entire image" ('image', the default): that mean
includes the hidden pixels, so it tells the optimiser C numbers about
them (for a digit canvas, roughly how much ink is hidden). 'visible' takes
the mean over the uncorrupted pixels only, the setting where the hidden
pixels are unknown; with no visible pixel (generation) it is the whole
image's mean, so `generate` is the same for both.

Masks for experiments: `square_masks` draws a square centred on a random
foreground pixel (label > 0) per image, so on the digit canvases a square
hides part of a digit.

Shapes: images x [batch, H, W, C] in [0, 1]; label maps y [batch, H, W]
int (-1 ignored); masks [batch, H, W] or [batch, H, W, 1], 1 = corrupted.
Sizes (step_size) are in 0-255 pixel units, as everywhere in advjax.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax.cpu import compilation
from advjax import typed_config
from advjax.attacks import core, losses, rules, threat
from advjax.errors import ConfigError

STEP_RULES = ("l2", "sign")
CONSTRAINTS = ("soft", "hard")
FILLS = ("image", "visible")
# An L-inf radius of 1 on the [0, 1] scale holds the whole box: no eps ball.
_WHOLE_BOX = 1.0


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
  """Hyper-parameters of inpainting and generation; frozen and hashable, a valid jit static arg.

  The paper gives no values. The defaults take Santurkar et al.'s L2 PGD
  with a step long enough for a 64x64 digit canvas: 60 steps of L2 length
  32/255 move an image by at most 7.5 in L2, about the distance from a grey
  fill to a 16x16 patch of digit strokes. lambda is relative to a
  cross-entropy averaged over the pixels, whose gradient per pixel is
  ~1/(H W) of a per-image loss's, so Santurkar et al.'s lambda = 10 is far
  too strong here: on the digit canvases (runs/seg_digits, 8 images, 16x16
  masks) lambda = 10 left the masked region almost at its grey fill (masked
  MSE 0.238 -> 0.227; each L2 step is spent undoing the last one's change
  outside the mask), while lambda = 0.3 repainted it as well as lambda = 0
  (0.108 vs 0.110) and kept the rest within an MSE of 1.4e-6 (9.6e-4 at 0).

  Attributes:
    num_steps: PGD steps K (0 returns the start).
    step_size: alpha in 0-255 pixel units: the L2 length of a step ('l2')
      or the change of every pixel ('sign').
    step_rule: 'l2' (g / ||g||_2 per image) or 'sign' (sign(g)).
    penalty: lambda of eq. 6, weight of the squared L2 norm of the change
      outside the mask against the pixel-mean cross-entropy ('soft' only).
    constraint: 'soft' (eq. 6's penalty, every pixel free) or 'hard' (only
      masked pixels change).
    fill: the start's per-channel mean: over the 'image' (the paper) or
      over the 'visible' (unmasked) pixels.
  """
  num_steps: int = 60
  step_size: float = 32.0
  step_rule: str = "l2"
  penalty: float = 0.3
  constraint: str = "soft"
  fill: str = "image"

  def __post_init__(self):
    def check(ok, field, why):
      if not ok:
        raise ConfigError(f"{field}={getattr(self, field)!r}: {why}")

    check(isinstance(self.num_steps, int) and self.num_steps >= 0, "num_steps", "must be an int >= 0")
    check(math.isfinite(self.step_size) and self.step_size >= 0, "step_size",
          "must be finite and >= 0 (0-255 pixel units)")
    try:
      rules.check(self.step_rule)
    except ConfigError as e:
      check(False, "step_rule", str(e))
    check(self.step_rule in STEP_RULES, "step_rule", f"must be one of {', '.join(STEP_RULES)}")
    check(math.isfinite(self.penalty) and self.penalty >= 0, "penalty", "must be finite and >= 0")
    check(self.constraint in CONSTRAINTS, "constraint", f"must be one of {', '.join(CONSTRAINTS)}")
    check(self.fill in FILLS, "fill", f"must be one of {', '.join(FILLS)}")

  @classmethod
  def from_config(cls, config) -> "SynthesisConfig":
    """Builds a config from a ConfigDict or dict with fields of the same names (ConfigError names a bad one)."""
    return typed_config.from_mapping(cls, config, "synthesis config")


def as_mask(mask: jax.Array, x: jax.Array) -> jax.Array:
  """A [batch, H, W] or [batch, H, W, 1] mask as float32 [batch, H, W, 1] of 0/1 (nonzero = 1)."""
  if mask.ndim == x.ndim - 1:
    mask = mask[..., None]
  if mask.shape != x.shape[:-1] + (1,):
    raise ValueError(f"mask shape {mask.shape} does not fit images {x.shape}: expected [batch, H, W] "
                     "or [batch, H, W, 1]")
  return (mask != 0).astype(jnp.float32)


def channel_mean(x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Per-image, per-channel mean of x over the pixels with weight 1 (all pixels if None).

  Args:
    x: [batch, H, W, C].
    weights: optional [batch, H, W, 1] of 0/1; an image with no weighted
      pixel gets its mean over all pixels.

  Returns:
    [batch, 1, 1, C].
  """
  full = jnp.mean(x, axis=(1, 2), keepdims=True)
  if weights is None:
    return full
  count = jnp.sum(weights, axis=(1, 2), keepdims=True)
  part = jnp.sum(x * weights, axis=(1, 2), keepdims=True) / jnp.maximum(count, 1.0)
  return jnp.where(count > 0, part, full)


def start_image(x: jax.Array, mask: jax.Array, fill: str = "image") -> jax.Array:
  """The corrupted image x'_0 = m (.) mu + (1 - m) (.) x, the start of eq. 6 (and, with m = 1, eq. 7).

  Args:
    x: [batch, H, W, C] in [0, 1].
    mask: [batch, H, W] or [batch, H, W, 1], 1 = corrupted.
    fill: 'image' (mu over every pixel, the paper) or 'visible' (over the unmasked pixels).

  Returns:
    [batch, H, W, C]; unmasked pixels equal x exactly.
  """
  m = as_mask(mask, x)
  mu = channel_mean(x, None if fill == "image" else 1.0 - m)
  return jnp.where(m > 0, jnp.broadcast_to(mu, x.shape), x)


def synthesis_loss(logits: jax.Array, x_syn: jax.Array, x: jax.Array, mask: jax.Array, y: jax.Array,
                   penalty: float) -> jax.Array:
  """Eq. 6 per image: CE(f(x'), y) + lambda ||(x' - x) (.) (1 - m)||_2^2 (to minimise).

  Args:
    logits: [batch, H, W, classes], f(x').
    x_syn: [batch, H, W, C], x'.
    x: [batch, H, W, C], the original image.
    mask: [batch, H, W] or [batch, H, W, 1], 1 = corrupted.
    y: [batch, H, W] label map, -1 ignored.
    penalty: lambda; 0 gives eq. 7's objective.

  Returns:
    [batch] float32.
  """
  outside = (x_syn - x) * (1.0 - as_mask(mask, x))
  return losses.cross_entropy(logits, y) + penalty * jnp.sum(jnp.square(outside), axis=(1, 2, 3))


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg"))
def inpaint(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, mask: jax.Array, y: jax.Array,
            rng: jax.Array, cfg: SynthesisConfig) -> jax.Array:
  """Inpaints the masked region of x by PGD on eq. 6 (soft) or inside the mask only (hard).

  Args:
    logits_fn: `x -> [batch, H, W, classes]` per-pixel logits; static, so
      reuse one object to avoid recompiles.
    x: [batch, H, W, C] original images in [0, 1] (their masked pixels are
      read only through the mean of `cfg.fill='image'`).
    mask: [batch, H, W] or [batch, H, W, 1], 1 = corrupted.
    y: [batch, H, W] int ground-truth label maps of the uncorrupted images, -1 ignored.
    rng: PRNG key; the steps draw nothing from it (no random start), it only
      feeds `core.optimize`'s per-step keys.
    cfg: `SynthesisConfig` (static).

  Returns:
    [batch, H, W, C] inpainted images in [0, 1]; with cfg.constraint='hard'
    the unmasked pixels equal x exactly.
  """
  m = as_mask(mask, x)
  hard = cfg.constraint == "hard"
  region = threat.ThreatModel("linf", _WHOLE_BOX, m if hard else None)
  penalty = 0.0 if hard else cfg.penalty

  def objective(delta, key):
    del key
    # Under 'hard' the iterate is x + m delta: its gradient lives in the mask.
    x_syn = x + (delta * m if hard else delta)
    return -jnp.sum(synthesis_loss(logits_fn(x_syn), x_syn, x, m, y, penalty))

  def project(delta):
    return region.project(delta, x)

  delta = start_image(x, m, cfg.fill) - x
  delta = core.optimize(objective, delta, rng, rule=rules.get(cfg.step_rule),
                        step_size=lambda k: threat.to_unit(cfg.step_size), project=project,
                        num_steps=cfg.num_steps)
  return threat.apply(x, delta)


def generate(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, rng: jax.Array,
             cfg: SynthesisConfig) -> jax.Array:
  """Generates an image for the label map y by PGD on eq. 7 from x's per-channel mean image.

  Eq. 7 is eq. 6 with every pixel corrupted (m = 1): no penalty, every
  pixel free, the start the mean image; cfg.constraint and cfg.fill make no
  difference.

  Args:
    logits_fn: `x -> [batch, H, W, classes]` per-pixel logits (static).
    x: [batch, H, W, C] images in [0, 1]; only their per-channel means are used.
    y: [batch, H, W] int label maps to generate for, -1 ignored.
    rng: PRNG key (see `inpaint`).
    cfg: `SynthesisConfig` (static).

  Returns:
    [batch, H, W, C] generated images in [0, 1].
  """
  return inpaint(logits_fn, x, jnp.ones(x.shape[:-1], jnp.float32), y, rng, cfg)


def square_masks(rng: jax.Array, labels: jax.Array, side: int) -> jax.Array:
  """Per image a side x side square centred on a random foreground pixel (label > 0).

  The centre is uniform over the image's foreground pixels (over all pixels
  if it has none); a square that would leave the image is shifted inside,
  so it always covers side^2 pixels and its centre pixel. For even sides
  the centre is the pixel just below and right of the square's middle.

  Args:
    rng: PRNG key.
    labels: [batch, H, W] int label maps (0 background, -1 ignored).
    side: the square's side in pixels, 1..min(H, W) (static).

  Returns:
    [batch, H, W] float32 masks, 1 inside the square.
  """
  b, h, w = labels.shape
  if not 1 <= side <= min(h, w):
    raise ValueError(f"square side {side} must be in 1..{min(h, w)}")
  foreground = (labels > 0).reshape(b, h * w)
  has_any = jnp.any(foreground, axis=1, keepdims=True)
  logits = jnp.where(foreground | ~has_any, 0.0, -jnp.inf)
  centre = jax.random.categorical(rng, logits, axis=-1)
  row, col = centre // w, centre % w
  top = jnp.clip(row - side // 2, 0, h - side)[:, None, None]
  left = jnp.clip(col - side // 2, 0, w - side)[:, None, None]
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
  return inside.astype(jnp.float32)
