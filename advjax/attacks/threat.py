"""Threat models: epsilon balls, optionally restricted to a region, intersected with the image box [0, 1].

The papers state perturbation sizes in 0-255 pixel units (eps = 8 means 8/255
on images in [0, 1]). Configs keep those units; `to_unit` converts them, and
the attacks call it exactly once when they resolve a config, so no other code
divides by 255.

A perturbation `delta` is applied as `clip(x + delta, 0, 1)`; `delta` itself is
projected onto the L-inf ball {|delta_i| <= eps} or the L2 ball
{||delta||_2 <= eps}. Norms are taken per perturbation over all axes but the
first, so a per-example `delta` [batch, H, W, C], a heap `delta`
[heaps, 1, H, W, C] and a universal `delta` [1, H, W, C] are all handled alike.
When `delta` has the shape of `x`, `clip_to_box` also folds the box into
`delta`, which makes `x + delta` the attacked image exactly as in BIM/PGD
(Kurakin et al.'s Clip_{X,eps}).

`ThreatModel` bundles these for the iterative adversaries: `init` draws the
starting perturbation and `project` maps a stepped one back to the feasible
set. Its optional `mask` (1 where a pixel may change, 0 where it must not,
broadcastable to the perturbation) restricts the perturbation to a region:
inpainting moves only the corrupted region, and a masked attack leaves every
other pixel exactly in place.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advjax.errors import unknown_name

NORMS = ("linf", "l2")
INITS = ("zero", "uniform", "mixed")
_TINY = 1e-12


def to_unit(eps_255):
  """Converts a size in 0-255 pixel units to the [0, 1] image scale."""
  return eps_255 / 255.0


def per_perturbation_norm(v: jax.Array, order: int | float) -> jax.Array:
  """Norm over all axes but the first, kept broadcastable: [n, 1, ..., 1]."""
  axes = tuple(range(1, v.ndim))
  if order == 1:
    n = jnp.sum(jnp.abs(v), axis=axes, keepdims=True)
  elif order == 2:
    n = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
  else:
    n = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
  return n


def project(delta: jax.Array, norm: str, eps) -> jax.Array:
  """Projects `delta` onto the eps ball of `norm` (eps in [0, 1] units, may be traced).

  Args:
    delta: [n, ...] perturbations, one per leading index.
    norm: 'linf' or 'l2'.
    eps: radius on the [0, 1] scale, a Python float or a traced scalar.

  Returns:
    `delta` projected, same shape.
  """
  if norm == "linf":
    return jnp.clip(delta, -eps, eps)
  if norm == "l2":
    n = per_perturbation_norm(delta, 2)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(n, _TINY))
  raise unknown_name("norm", norm, NORMS)


def apply(x: jax.Array, delta: jax.Array) -> jax.Array:
  """The attacked image clip(x + delta, 0, 1); `delta` broadcasts against `x`."""
  return jnp.clip(x + delta, 0.0, 1.0)


def clip_to_box(x: jax.Array, delta: jax.Array) -> jax.Array:
  """Folds the box into a per-example `delta` so that x + delta lies in [0, 1].

  Args:
    x: [batch, ...] clean images in [0, 1].
    delta: perturbation of the same shape as `x`.

  Returns:
    clip(x + delta, 0, 1) - x. Clipping shrinks each coordinate towards 0, so
    the result stays inside any L-inf or L2 ball that contained `delta`.
  """
  return jnp.clip(x + delta, 0.0, 1.0) - x


def random_init(rng: jax.Array, shape, norm: str, eps, dtype=jnp.float32) -> jax.Array:
  """Draws perturbations uniformly from the eps ball.

  L-inf: each coordinate uniform in [-eps, eps]. L2: uniform in volume, a
  Gaussian direction scaled to radius eps * u^(1/d) with d the dimension of one
  perturbation.

  Args:
    rng: PRNG key.
    shape: [n, ...] shape of the perturbations.
    norm: 'linf' or 'l2'.
    eps: radius on the [0, 1] scale (may be traced).
    dtype: float dtype.

  Returns:
    [n, ...] perturbations inside the ball.
  """
  if norm == "linf":
    return jax.random.uniform(rng, shape, dtype, -1.0, 1.0) * eps
  if norm == "l2":
    k_dir, k_rad = jax.random.split(rng)
    direction = jax.random.normal(k_dir, shape, dtype)
    direction = direction / jnp.maximum(per_perturbation_norm(direction, 2), _TINY)
    dim = 1
    for s in shape[1:]:
      dim *= s
    u = jax.random.uniform(k_rad, (shape[0],) + (1,) * (len(shape) - 1), dtype)
    return direction * eps * u ** (1.0 / dim)
  raise unknown_name("norm", norm, NORMS)


class ThreatModel(NamedTuple):
  """An eps ball of `norm`, optionally restricted to a region, within the image box.

  Built inside traced code (eps may be traced), so it is a plain NamedTuple.

  Attributes:
    norm: 'linf' or 'l2'.
    eps: radius on the [0, 1] scale, a float or a traced scalar.
    mask: None, or 1/0 per pixel (broadcastable to the perturbation): where
      the perturbation may be non-zero.
  """
  norm: str
  eps: Any
  mask: jax.Array | None = None

  def init(self, rng: jax.Array, shape, kind: str = "zero", clean_fraction: float = 0.2,
           dtype=jnp.float32) -> jax.Array:
    """A starting perturbation [n, ...] inside the ball (not yet box-clipped).

    Args:
      rng: PRNG key.
      shape: perturbation shape; the first axis indexes perturbations.
      kind: 'zero', 'uniform' in the ball (PGD's random start), or 'mixed':
        a random `clean_fraction` of the perturbations start at zero and the
        rest uniformly (feature-denoising training, Xie thesis sec. 4.5).
      clean_fraction: see 'mixed'.
      dtype: float dtype.

    Returns:
      [n, ...] perturbations, zero outside the mask.
    """
    if kind == "zero":
      return jnp.zeros(shape, dtype)
    if kind not in INITS:
      raise unknown_name("init", kind, INITS)
    k_init, k_mix = jax.random.split(rng)
    delta = random_init(k_init, shape, self.norm, self.eps, dtype)
    if kind == "mixed":
      n = shape[0]
      num_clean = int(round(clean_fraction * n))
      rank = jax.random.permutation(k_mix, n)
      clean = (rank < num_clean).reshape((n,) + (1,) * (len(shape) - 1))
      delta = jnp.where(clean, 0.0, delta)
    return self._masked(delta)

  def project(self, delta: jax.Array, x: jax.Array | None = None) -> jax.Array:
    """`delta` projected onto the ball, zeroed outside the mask and, given `x`, folded into the box.

    Args:
      delta: [n, ...] perturbations.
      x: the clean images when `delta` is per example (same shape): then
        x + delta is kept in [0, 1] as well. Shared perturbations (heaps,
        universal) pass None and are clipped where they are added.

    Returns:
      `delta` projected, same shape.
    """
    delta = self._masked(project(delta, self.norm, self.eps))
    return delta if x is None else clip_to_box(x, delta)

  def _masked(self, delta: jax.Array) -> jax.Array:
    return delta if self.mask is None else delta * self.mask.astype(delta.dtype)
