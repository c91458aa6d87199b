"""Max pooling whose backward pass is a mask, not XLA's select-and-scatter.

`flax.linen.max_pool` is `lax.reduce_window(max)`. Its derivative, as JAX
builds it, is `select_and_gather_add` forward and `select_and_scatter_add`
backward, which XLA:CPU runs as a slow scalar loop: ReLU plus a 2x2 pool,
forward and backward, on [128, 28, 28, 32] takes several times longer than
in PyTorch, and every attack step of the convnet pays it three times.

The derivative must send the cotangent of each window to ONE element. JAX's
rule (select with `>=` in row-major window order, which XLA implements by
replacing the selected element only by a strictly larger one) picks the
FIRST maximum of the window; a plain `jnp.max` would split the cotangent
evenly between ties, which differs on the flat (all-zero after ReLU)
background of digits. Both paths below therefore compute, for the window
positions p = a k_w + b in row-major order,

    y = max_p x_p,   first = min {p : x_p = y},   mask_p = [p = first],

and define the tangent of the output as the masked window sum
`dy = sum_p mask_p dx_p` (a `jax.custom_jvp`). That rule is linear in dx, so
JAX transposes it into the gradient `dx_p += mask_p g`; forward values equal
nn.max_pool's bit for bit (a maximum does not round) and so do gradients.
Because the rule is a custom JVP rather than a custom VJP, forward mode
(`jax.jvp`, `jax.jacfwd`) and second-order derivatives (grad of grad,
Hessian-vector products) work too, with ties again resolved to the first
maximum. Under `jax.grad` the boolean mask is computed in the forward pass
and the backward pass is elementwise.

Non-overlapping windows (every window size <= its stride, as in the
convnet's 2x2/stride-2 pool, VALID or 'SAME'): each element lies in at most
one window, so pooling is a reshape. Pad with -inf, cut the map into
[out_h, stride_h, out_w, stride_w] blocks, keep the first k_h x k_w
elements of each block and reduce,

    y[i, j] = max_{a < k_h, b < k_w} x[i s_h + a - lo_h, j s_w + b - lo_w].

Overlapping windows (the ImageNet ResNet stem's 3x3/stride-2 pool with
padding ((1, 1), (1, 1))): one strided slice of the padded map per window
offset (a, b), y = max over the k_h k_w slices, and the mask built offset by
offset (`first_ab = [x_ab = y] and no earlier offset matched`). An element
that is the maximum of several windows sums their cotangents, and float
addition is not associative: select-and-scatter adds them in row-major
window order. The tangent sums the offsets in row-major order, which JAX's
transpose accumulates last offset first, i.e. in row-major *window* order
for each element, so the gradient is bit-identical (tested on inputs where
the other order rounds differently). On [16, 56, 56, 64], ReLU plus this
pool, forward and backward, ran ~4x faster than nn.max_pool.

Integer inputs, negative paddings and empty outputs call `nn.max_pool`.

Caveats. Padding holds -inf and counts as a window element, as in XLA: a
window whose maximum is -inf may send its gradient into the padding. Signed
zeros: where nn.max_pool's gradient is +0.0 this one may be -0.0; they
compare equal. NaN inputs: a window whose maximum is NaN gets no gradient
here, while select-and-scatter's `>=` picks an element that depends on the
NaN's position.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.errors import ConfigError

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]


class _Blocked(NamedTuple):
  """Static layout of a non-overlapping pool on one [..., H, W, C] shape."""

  window: tuple[int, int]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]  # (low, high) applied before blocking
  out: tuple[int, int]


class _Shifted(NamedTuple):
  """Static layout of an overlapping pool: one strided slice per window offset."""

  window: tuple[int, int]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  out: tuple[int, int]


def _pairs(name: str, value, ndim: int = 2) -> tuple[int, ...]:
  try:
    value = tuple(int(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(f"max_pool {name} must be {ndim} positive integers, got {value!r}") from None
  if len(value) != ndim or any(v < 1 for v in value):
    raise ConfigError(f"max_pool {name} must be {ndim} positive integers, got {value}")
  return value


def _resolve_padding(padding: Padding, spatial, window, strides):
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ConfigError(f"max_pool padding must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}")
    return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding.upper()))
  try:
    pads = tuple(tuple(int(q) for q in p) for p in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ConfigError(f"max_pool padding must be two (low, high) pairs, got {padding!r}")
  return pads


def _plan(shape, window, strides, pads) -> _Blocked | _Shifted | None:
  """The layout of the fast path, or None when it does not apply."""
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    return None
  out = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(shape[-3:-1], pads, window, strides))
  if any(o < 1 for o in out):
    return None
  if any(k > s for k, s in zip(window, strides)):
    return _Shifted(window, strides, pads, out)
  # Pad (or crop, where the high side is negative) to exactly out * stride.
  blocked = tuple((lo, o * s - n - lo) for n, (lo, _), o, s in zip(shape[-3:-1], pads, out, strides))
  return _Blocked(window, strides, blocked, out)


def _blocks(x: Array, plan: _Blocked, fill) -> Array:
  """[..., H, W, C] -> [..., out_h, k_h, out_w, k_w, C] windows (padded with `fill`)."""
  config = [(0, 0, 0)] * (x.ndim - 3) + [(lo, hi, 0) for lo, hi in plan.pads] + [(0, 0, 0)]
  x = lax.pad(x, jnp.asarray(fill, x.dtype), config)
  (oh, ow), (sh, sw), (kh, kw) = plan.out, plan.strides, plan.window
  x = x.reshape(*x.shape[:-3], oh, sh, ow, sw, x.shape[-1])
  return x[..., :kh, :, :kw, :]


def _first_max_mask(xw: Array, y: Array, plan: _Blocked) -> Array:
  """Boolean [..., out_h, k_h, out_w, k_w, C]: True at each window's first maximum."""
  kh, kw = plan.window
  position = (np.arange(kh)[:, None] * kw + np.arange(kw)[None, :]).reshape(kh, 1, kw, 1)
  # Padding (-inf) counts as a window element, as in XLA's select-and-scatter:
  # a window whose maximum is -inf sends its gradient to padding if that comes first.
  hit = xw == y[..., :, None, :, None, :]
  first = jnp.min(jnp.where(hit, position, kh * kw), axis=(-4, -2), keepdims=True)
  return position == first


def _blocked_max_pool(x: Array, plan: _Blocked) -> Array:
  return jnp.max(_blocks(x, plan, -jnp.inf), axis=(-4, -2))


_blocked_max_pool = jax.custom_jvp(_blocked_max_pool, nondiff_argnums=(1,))


@_blocked_max_pool.defjvp
def _blocked_max_pool_jvp(plan, primals, tangents):
  (x,), (dx,) = primals, tangents
  # The primal output through this same rule, not jnp.max, whose own derivative
  # splits ties: higher-order derivatives then route to the first maximum too.
  y = _blocked_max_pool(x, plan)
  mask = _first_max_mask(_blocks(x, plan, -jnp.inf), y, plan)
  dxw = _blocks(dx, plan, 0)
  dy = jnp.sum(jnp.where(mask, dxw, jnp.zeros((), dx.dtype)), axis=(-4, -2), dtype=dx.dtype)
  return y, dy


def _offsets(x: Array, plan: _Shifted, fill) -> list[Array]:
  """Per window offset (a, b), row-major: x[..., a + i s_h - lo_h, b + j s_w - lo_w, :] over (i, j)."""
  lead = x.ndim - 3
  config = [(0, 0, 0)] * lead + [(lo, hi, 0) for lo, hi in plan.pads] + [(0, 0, 0)]
  xp = lax.pad(x, jnp.asarray(fill, x.dtype), config)
  (kh, kw), (sh, sw), (oh, ow) = plan.window, plan.strides, plan.out
  return [lax.slice(xp, (0,) * lead + (a, b, 0),
                    xp.shape[:lead] + (a + (oh - 1) * sh + 1, b + (ow - 1) * sw + 1, xp.shape[-1]),
                    (1,) * lead + (sh, sw, 1))
          for a in range(kh) for b in range(kw)]


def _overlapping_max_pool(x: Array, plan: _Shifted) -> Array:
  return functools.reduce(jnp.maximum, _offsets(x, plan, -jnp.inf))


_overlapping_max_pool = jax.custom_jvp(_overlapping_max_pool, nondiff_argnums=(1,))


@_overlapping_max_pool.defjvp
def _overlapping_max_pool_jvp(plan, primals, tangents):
  (x,), (dx,) = primals, tangents
  y = _overlapping_max_pool(x, plan)
  taken = jnp.zeros(y.shape, bool)
  dy = None
  for xs, ts in zip(_offsets(x, plan, -jnp.inf), _offsets(dx, plan, 0)):
    first = (xs == y) & ~taken
    taken = taken | first
    term = jnp.where(first, ts, jnp.zeros((), dx.dtype))
    # Summed in row-major offset order: JAX's transpose then accumulates an
    # element's cotangents from the last offset to the first, i.e. over its
    # windows in row-major window order, the order of XLA's select-and-scatter.
    dy = term if dy is None else dy + term
  return y, dy


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID") -> Array:
  """Drop-in for `flax.linen.max_pool` on NHWC maps, with a fast derivative.

  Same arguments, output and gradient as `nn.max_pool(x, window, strides,
  padding)`; VALID pooling floors odd sizes (28 -> 14 -> 7 -> 3 for
  2x2/stride 2). Floating inputs take the reshape path (non-overlapping
  windows) or the shifted-slices path (overlapping windows) of the module
  docstring; integer inputs, negative paddings and empty outputs call
  `nn.max_pool` itself.

  Args:
    x: [..., height, width, channels], floating point; any number of leading
      batch axes (none: a single map, as in nn.max_pool).
    window: (window_h, window_w).
    strides: (stride_h, stride_w); None means (1, 1), as in nn.max_pool.
    padding: 'VALID', 'SAME' or ((low_h, high_h), (low_w, high_w)); padded
      positions hold -inf (so a window whose maximum is -inf may send its
      gradient into the padding, exactly as nn.max_pool does).

  Returns:
    [..., out_h, out_w, channels] with out = (size + low + high - window) //
    stride + 1.

  Raises:
    ConfigError: if window, strides or padding is malformed, or x has fewer
      than three axes.
  """
  window = _pairs("window", window)
  strides = (1, 1) if strides is None else _pairs("strides", strides)
  if x.ndim < 3:
    raise ConfigError(f"max_pool needs [..., height, width, channels], got shape {x.shape}")
  pads = _resolve_padding(padding, x.shape[-3:-1], window, strides)
  plan = _plan(x.shape, window, strides, pads)
  if plan is None or not jnp.issubdtype(x.dtype, jnp.floating):
    return nn.max_pool(x, window, strides=strides, padding=pads)
  if isinstance(plan, _Shifted):
    return _overlapping_max_pool(x, plan)
  return _blocked_max_pool(x, plan)


def has_fast_path(shape: Sequence[int], window: Sequence[int], strides: Sequence[int] | None = None,
                  padding: Padding = "VALID") -> bool:
  """Whether `max_pool` on a floating [..., H, W, C] map of `shape` avoids nn.max_pool."""
  window = _pairs("window", window)
  strides = (1, 1) if strides is None else _pairs("strides", strides)
  pads = _resolve_padding(padding, tuple(shape[-3:-1]), window, strides)
  return _plan(tuple(shape), window, strides, pads) is not None
