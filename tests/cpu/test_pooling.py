"""Max pooling with a mask derivative (advjax.cpu.pooling) against nn.max_pool and NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.errors import ConfigError
from advjax.cpu import pooling

# (window, strides, padding): the convnet's pool, the denoising block's 'SAME'
# pool, a gapped pool, explicit and asymmetric paddings, and the ResNet stem's
# overlapping pool.
CASES = [
    ((2, 2), (2, 2), "VALID"),
    ((2, 2), (2, 2), "SAME"),
    ((2, 2), (3, 3), "VALID"),
    ((3, 3), (3, 3), ((1, 1), (0, 2))),
    ((2, 3), (2, 3), ((1, 0), (2, 1))),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
]
SHAPES = [(2, 7, 9, 3), (1, 8, 6, 2)]


def _pads(shape, window, strides, padding):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(shape[1:3], window, strides, padding)
  return padding


def numpy_max_pool(x, window, strides, padding):
  """Reference: -inf padding, max per window, gradient routing to the first maximum.

  Returns (y, route) where route[n, i, j, c] is the flat index into the padded
  map of the window's first maximum in row-major window order.
  """
  (lh, hh), (lw, hw) = _pads(x.shape, window, strides, padding)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (lh, hh), (lw, hw), (0, 0)), constant_values=-np.inf)
  (kh, kw), (sh, sw) = window, strides
  oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
  route = np.zeros(y.shape + (2,), int)
  for n in range(x.shape[0]):
    for i in range(oh):
      for j in range(ow):
        for c in range(x.shape[3]):
          win = xp[n, i * sh:i * sh + kh, j * sw:j * sw + kw, c]
          a = int(np.argmax(win))  # First occurrence in row-major order.
          y[n, i, j, c] = win.flat[a]
          route[n, i, j, c] = (i * sh + a // kw, j * sw + a % kw)
  return y, route, (lh, lw), xp.shape


def numpy_route(g, route, low, padded_shape, x_shape):
  """Sends each output cotangent to its window's first maximum; crops the padding."""
  out = np.zeros(padded_shape)
  n, oh, ow, c = g.shape
  for b in range(n):
    for i in range(oh):
      for j in range(ow):
        for k in range(c):
          r, s = route[b, i, j, k]
          out[b, r, s, k] += g[b, i, j, k]
  return out[:, low[0]:low[0] + x_shape[1], low[1]:low[1] + x_shape[2]]


def _data(kind, shape, seed):
  rng = np.random.default_rng(seed)
  if kind == "normal":
    return rng.standard_normal(shape)
  if kind == "zeros":
    return np.zeros(shape)
  if kind == "quantised":  # Many ties, as on a digit's flat background.
    return np.round(rng.standard_normal(shape))
  return np.where(rng.random(shape) < 0.3, -np.inf, np.round(rng.standard_normal(shape)))


def _np32(a):
  return np.asarray(a, np.float32)


@pytest.mark.parametrize("kind", ["normal", "zeros", "quantised", "with_neg_inf"])
@pytest.mark.parametrize("window,strides,padding", CASES)
def test_forward_and_gradient_equal_nn_max_pool_and_numpy(kind, window, strides, padding):
  for seed, shape in enumerate(SHAPES):
    x = jnp.asarray(_data(kind, shape, seed), jnp.float32)
    y_ref, route, low, padded_shape = numpy_max_pool(x, window, strides, padding)
    g = jnp.asarray(np.random.default_rng(seed + 10).standard_normal(y_ref.shape), jnp.float32)
    y, vjp = jax.vjp(lambda v: pooling.max_pool(v, window, strides, padding), x)
    y_nn, vjp_nn = jax.vjp(lambda v: nn.max_pool(v, window, strides, padding), x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, y_nn)
    (dx,), (dx_nn,) = vjp(g), vjp_nn(g)
    np.testing.assert_array_equal(dx_nn, dx)
    # Overlapping windows sum several cotangents: float32 rounding only.
    np.testing.assert_allclose(dx, numpy_route(np.asarray(g, np.float64), route, low, padded_shape, shape),
                               rtol=1e-6, atol=1e-6)


def test_fast_paths_cover_the_models_pools():
  assert pooling.has_fast_path((128, 28, 28, 32), (2, 2), (2, 2))  # Convnet.
  assert pooling.has_fast_path((5, 9, 9, 4), (2, 2), (2, 2), "SAME")  # Denoising keys.
  assert pooling.has_fast_path((1, 56, 56, 64), (3, 3), (2, 2), ((1, 1), (1, 1)))  # ResNet stem.
  assert not pooling.has_fast_path((1, 8, 8, 1), (2, 2), (2, 2), ((-1, 0), (0, 0)))


def numpy_route_in_order(g, route, low, padded_shape, x_shape, reverse=False):
  """Float32 accumulation of the cotangents in row-major window order (or its reverse)."""
  g = np.asarray(g, np.float32)
  out = np.zeros(padded_shape, np.float32)
  order = list(np.ndindex(g.shape))
  for n, i, j, c in order[::-1] if reverse else order:
    r, s = route[n, i, j, c]
    out[n, r, s, c] = np.float32(out[n, r, s, c] + g[n, i, j, c])
  return out[:, low[0]:low[0] + x_shape[1], low[1]:low[1] + x_shape[2]]


def test_overlapping_windows_accumulate_in_window_order():
  # The ResNet stem's pool: an element that is the maximum of 3 or 4 windows
  # sums their cotangents, and the summation order shows in the last bit.
  window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
  x = jnp.asarray(np.random.default_rng(20).standard_normal((2, 40, 40, 8)), jnp.float32)
  _, route, low, padded_shape = numpy_max_pool(x, window, strides, padding)
  g = jnp.asarray(np.random.default_rng(21).standard_normal(route.shape[:-1]), jnp.float32)
  in_order = numpy_route_in_order(g, route, low, padded_shape, x.shape)
  reversed_order = numpy_route_in_order(g, route, low, padded_shape, x.shape, reverse=True)
  assert not np.array_equal(in_order, reversed_order)  # The order is observable here.
  grad = jax.jit(lambda v, c: jax.vjp(lambda u: pooling.max_pool(u, window, strides, padding), v)[1](c)[0])
  grad_nn = jax.jit(lambda v, c: jax.vjp(lambda u: nn.max_pool(u, window, strides, padding), v)[1](c)[0])
  np.testing.assert_array_equal(grad_nn(x, g), in_order)
  np.testing.assert_array_equal(grad(x, g), in_order)


def test_convnet_chain_after_relu_matches_nn_under_jit():
  # ReLU then pool, three times: 28 -> 14 -> 7 -> 3, ties everywhere the ReLU cut.
  x = jnp.asarray(np.round(np.random.default_rng(0).standard_normal((2, 28, 28, 3)) * 2) / 2, jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 3, 3)), jnp.float32)

  def chain(pool, v):
    for _ in range(3):
      v = pool(nn.relu(v), (2, 2), strides=(2, 2))
    return v

  def value_and_grad(pool):
    return jax.jit(jax.value_and_grad(lambda v: jnp.sum(chain(pool, v) * w)))

  value, grad = value_and_grad(pooling.max_pool)(x)
  value_nn, grad_nn = value_and_grad(nn.max_pool)(x)
  out = jax.jit(lambda v: chain(pooling.max_pool, v))(x)
  assert out.shape == (2, 3, 3, 3)
  assert value == value_nn
  np.testing.assert_array_equal(grad, grad_nn)
  # Each positive output sends its weight to exactly one input, even among tied maxima.
  assert np.count_nonzero(grad) == np.count_nonzero(out > 0) > 0


@pytest.mark.parametrize("window,strides,padding,out", [((2, 2), (2, 2), "VALID", (3, 4)),
                                                       ((3, 3), (2, 2), ((1, 1), (1, 1)), (4, 5))])
def test_bfloat16_and_vmap(window, strides, padding, out):
  x = jnp.asarray(_data("normal", (3, 2, 7, 9, 4), 3), jnp.bfloat16)
  x = x.at[:, 0].set(jnp.round(x[:, 0]))  # Ties in one half of the batch.
  g = jnp.asarray(np.random.default_rng(4).standard_normal((3, 2) + out + (4,)), jnp.bfloat16)

  def grads(pool):
    def one(v, c):
      return jax.vjp(lambda u: pool(u, window, strides, padding), v)[1](c)[0]
    return jax.jit(jax.vmap(one))(x, g)

  dx, dx_nn = grads(pooling.max_pool), grads(nn.max_pool)
  assert dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(_np32(dx), _np32(dx_nn))
  y = jax.vmap(lambda v: pooling.max_pool(v, window, strides, padding))(x)
  y_ref = np.stack([numpy_max_pool(_np32(v), window, strides, padding)[0] for v in x])
  np.testing.assert_array_equal(_np32(y), y_ref)


@pytest.mark.parametrize("window,strides,padding", [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), ((1, 1), (1, 1)))])
def test_forward_mode_and_second_order(window, strides, padding):
  rng = np.random.default_rng(5)
  x = jnp.asarray(np.round(rng.standard_normal((1, 6, 5, 2)) * 2), jnp.float32)
  v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  _, route, low, padded_shape = numpy_max_pool(x, window, strides, padding)
  c = jnp.asarray(rng.standard_normal(route.shape[:-1]), jnp.float32)
  pool = lambda u: pooling.max_pool(u, window, strides, padding)

  def pick(a):  # The value of `a` at each window's first maximum.
    a = np.pad(np.asarray(a, np.float64), ((0, 0), (low[0], padded_shape[1] - a.shape[1] - low[0]),
                                           (low[1], padded_shape[2] - a.shape[2] - low[1]), (0, 0)))
    return np.take_along_axis(a[0].reshape(-1, a.shape[-1]),
                              (route[0, ..., 0] * padded_shape[2] + route[0, ..., 1]).reshape(-1, a.shape[-1]),
                              axis=0).reshape(route.shape[1:-1])[None]

  y, dy = jax.jvp(pool, (x,), (v,))
  np.testing.assert_array_equal(dy, pick(v))

  # f(x) = sum(c * pool(x)^2): grad = route(2 c y), Hessian-vector product = route(2 c pick(v)).
  f = lambda u: jnp.sum(c * pool(u) ** 2)
  hvp_fwd = jax.jvp(jax.grad(f), (x,), (v,))[1]
  hvp_rev = jax.grad(lambda u: jnp.vdot(jax.grad(f)(u), v))(x)
  expected = numpy_route(2 * np.asarray(c, np.float64) * pick(v), route, low, padded_shape, x.shape)
  np.testing.assert_allclose(hvp_fwd, expected, rtol=1e-6)
  np.testing.assert_allclose(hvp_rev, expected, rtol=1e-6)
  # Ties (e.g. the [-0, -0] column of one 2x2 window) get the whole second
  # derivative at the first maximum, as with nn.max_pool; jnp.max's rule would split it.
  f_nn = lambda u: jnp.sum(c * nn.max_pool(u, window, strides, padding) ** 2)
  np.testing.assert_array_equal(hvp_rev, jax.grad(lambda u: jnp.vdot(jax.grad(f_nn)(u), v))(x))
  np.testing.assert_allclose(jax.grad(f)(x), numpy_route(2 * np.asarray(c * y, np.float64), route, low,
                                                         padded_shape, x.shape), rtol=1e-6)


def test_unbatched_map_like_nn_max_pool():
  x = jnp.asarray(_data("quantised", (5, 7, 2), 6), jnp.float32)
  np.testing.assert_array_equal(pooling.max_pool(x, (2, 2), (2, 2)), nn.max_pool(x, (2, 2), (2, 2)))
  np.testing.assert_array_equal(jax.grad(lambda v: pooling.max_pool(v, (2, 2), (2, 2)).sum())(x),
                                jax.grad(lambda v: nn.max_pool(v, (2, 2), (2, 2)).sum())(x))


@pytest.mark.parametrize("kwargs", [dict(window=(2,)), dict(window=(2, 0)), dict(window=(2, 2), strides=(1, 2, 3)),
                                    dict(window=(2, 2), padding="CIRCULAR"),
                                    dict(window=(2, 2), padding=((1, 1),))])
def test_bad_arguments_raise_config_error(kwargs):
  with pytest.raises(ConfigError):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), **kwargs)
