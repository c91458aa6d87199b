"""Threat models: epsilon balls intersected with the image box [0, 1].

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
"""

import jax
import jax.numpy as jnp

from advjax.errors import unknown_name

NORMS = ("linf", "l2")
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
