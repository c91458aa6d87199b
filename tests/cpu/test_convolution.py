"""Convolution with a forward-convolution input gradient (advjax.cpu.convolution)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.errors import ConfigError
from advjax.cpu import convolution
from advjax.models import layers

DN = ("NHWC", "HWIO", "NHWC")
SIZES = [(7, 8), (9, 9)]
# Largest |difference| to autodiff, relative to the largest |autodiff gradient|.
TOLERANCE = {jnp.float32: 1e-6, jnp.bfloat16: 1e-2}


def numpy_conv_and_grads(x, w, g, stride, pad, dilation, groups):
  """Float64 reference: the forward convolution and its exact adjoints.

  y[n, p, q, o] = sum_{a, b, i} x_pad[n, p s + a d, q s + b d, i] w[a, b, i, o]
  within each feature group; dx and dw accumulate g through the same index map.
  """
  x, w, g = (np.asarray(v, np.float64) for v in (x, w, g))
  (lh, hh), (lw, hw) = pad
  xp = np.pad(x, ((0, 0), (lh, hh), (lw, hw), (0, 0)))
  kh, kw, in_g, out = w.shape
  out_g = out // groups
  oh = (xp.shape[1] - (kh - 1) * dilation - 1) // stride + 1
  ow = (xp.shape[2] - (kw - 1) * dilation - 1) // stride + 1
  y = np.zeros((x.shape[0], oh, ow, out))
  dxp, dw = np.zeros_like(xp), np.zeros_like(w)
  for a in range(kh):
    for b in range(kw):
      rows = slice(a * dilation, a * dilation + (oh - 1) * stride + 1, stride)
      cols = slice(b * dilation, b * dilation + (ow - 1) * stride + 1, stride)
      for k in range(groups):
        ci, co = slice(k * in_g, (k + 1) * in_g), slice(k * out_g, (k + 1) * out_g)
        patch = xp[:, rows, cols, ci]
        y[..., co] += np.einsum("nhwi,io->nhwo", patch, w[a, b, :, co])
        dxp[:, rows, cols, ci] += np.einsum("nhwo,io->nhwi", g[..., co], w[a, b, :, co])
        dw[a, b, :, co] += np.einsum("nhwi,nhwo->io", patch, g[..., co])
  dx = dxp[:, lh:lh + x.shape[1], lw:lw + x.shape[2]]
  return y, dx, dw


def _autodiff(x, w, stride, pad, dilation, groups):
  return lax.conv_general_dilated(x, w, (stride, stride), pad, rhs_dilation=(dilation, dilation),
                                  dimension_numbers=DN, feature_group_count=groups)


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _inputs(shape_x, shape_w, dtype, seed):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal(shape_x), dtype),
          jnp.asarray(rng.standard_normal(shape_w) / np.sqrt(np.prod(shape_w[:3])), dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("groups", ["one", "two", "depthwise", "depthwise_x2"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_forward_and_gradients_match_autodiff_and_numpy(kernel, stride, groups, dtype):
  cin, cout, g = {"one": (3, 5, 1), "two": (4, 6, 2), "depthwise": (4, 4, 4), "depthwise_x2": (4, 8, 4)}[groups]
  pad = ((kernel // 2, kernel // 2),) * 2  # As layers.conv pads.
  for seed, (h, w_) in enumerate(SIZES):
    x, w = _inputs((2, h, w_, cin), (kernel, kernel, cin // g, cout), dtype, seed)
    y, vjp = jax.vjp(lambda a, b: convolution.conv_general(x=a, kernel=b, strides=stride, padding=pad,
                                                           feature_group_count=g), x, w)
    y_ad, vjp_ad = jax.vjp(lambda a, b: _autodiff(a, b, stride, pad, 1, g), x, w)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ad, np.float32))
    assert y.dtype == dtype and y.shape == (2, -(-h // stride), -(-w_ // stride), cout)
    ct = jnp.asarray(np.random.default_rng(seed + 7).standard_normal(y.shape), dtype)
    (dx, dw), (dx_ad, dw_ad) = vjp(ct), vjp_ad(ct)
    assert dx.dtype == dw.dtype == dtype
    assert _max_rel(dx, dx_ad) <= TOLERANCE[dtype]
    assert _max_rel(dw, dw_ad) <= TOLERANCE[dtype]
    y_ref, dx_ref, dw_ref = numpy_conv_and_grads(x, w, ct, stride, pad, 1, g)
    loose = 1e-5 if dtype == jnp.float32 else 2e-2
    assert _max_rel(y, y_ref) <= loose
    assert _max_rel(dx, dx_ref) <= loose
    assert _max_rel(dw, dw_ref) <= loose


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3)), 1])
def test_dilation_and_other_paddings(padding):
  x, w = _inputs((2, 9, 8, 4), (3, 3, 2, 6), jnp.float32, 3)
  for stride, dilation in [(1, 2), (2, 2), (3, 1)]:
    pad = convolution.resolve_padding(padding, (9, 8), (3, 3), (stride, stride), (dilation, dilation))
    y, vjp = jax.vjp(lambda a, b: convolution.conv_general(a, b, stride, padding, dilation, 2), x, w)
    ct = jnp.asarray(np.random.default_rng(stride).standard_normal(y.shape), jnp.float32)
    y_ref, dx_ref, dw_ref = numpy_conv_and_grads(x, w, ct, stride, pad, dilation, 2)
    dx, dw = vjp(ct)
    assert _max_rel(y, y_ref) <= 1e-5
    assert _max_rel(dx, dx_ref) <= 1e-5
    assert _max_rel(dw, dw_ref) <= 1e-5


def test_input_gradient_in_a_compiled_loop_matches_autodiff():
  # Dense, depthwise (the HWOI path) and strided convolutions in a fori_loop
  # body, where XLA picks different kernels than for a lone convolution.
  x, w = _inputs((4, 9, 9, 3), (3, 3, 3, 8), jnp.float32, 4)
  wd = _inputs((1,), (3, 3, 1, 8), jnp.float32, 5)[1]
  w2 = _inputs((1,), (3, 3, 8, 4), jnp.float32, 6)[1]
  pad = ((1, 1), (1, 1))

  def attack(conv):
    def loss(v):
      h = jax.nn.relu(conv(v, w, 1, pad, 1))
      h = jax.nn.relu(conv(h, wd, 1, pad, 8))
      return jnp.sum(jnp.sin(conv(h, w2, 2, pad, 1)))

    def step(_, v):
      return v + 0.1 * jax.grad(loss)(v)
    return jax.jit(lambda v: lax.fori_loop(0, 3, step, v))

  mine = attack(lambda a, b, s, p, g: convolution.conv_general(a, b, s, p, feature_group_count=g))
  reference = attack(lambda a, b, s, p, g: _autodiff(a, b, s, p, 1, g))
  assert _max_rel(mine(x) - x, reference(x) - x) <= 1e-5
  assert np.max(np.abs(np.asarray(mine(x) - x))) > 1e-3  # The loop really moved x.


def test_vmap_and_second_order():
  x, w = _inputs((3, 2, 6, 7, 2), (3, 3, 2, 3), jnp.float32, 6)
  pad = ((1, 1), (1, 1))
  mine = lambda a, b: jnp.sum(jnp.tanh(convolution.conv_general(a, b, 2, pad)) ** 2)
  ref = lambda a, b: jnp.sum(jnp.tanh(_autodiff(a, b, 2, pad, 1, 1)) ** 2)
  per_example = jax.vmap(jax.grad(mine), in_axes=(0, None))(x, w)
  assert _max_rel(per_example, jax.vmap(jax.grad(ref), in_axes=(0, None))(x, w)) <= 1e-6
  # Reverse over reverse: gradient of the squared input-gradient norm.
  second = lambda f: jax.grad(lambda a: jnp.sum(jax.grad(f)(a, w) ** 2))(x[0])
  assert _max_rel(second(mine), second(ref)) <= 1e-5
  # Forward mode is what a custom VJP gives up.
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda a: convolution.conv_general(a, w, 1, pad), (x[0],), (x[0],))


def test_transposed_kernel_swaps_in_and_out_within_groups():
  w = np.arange(2 * 3 * 2 * 6).reshape(2, 3, 2, 6)  # 2 groups: in 2 per group, out 3 per group.
  t = np.asarray(convolution.transposed_kernel(jnp.asarray(w), groups=2))
  assert t.shape == (2, 3, 3, 4)
  for a in range(2):
    for b in range(3):
      for g in range(2):
        for i in range(2):
          for c in range(3):
            assert t[a, b, c, g * 2 + i] == w[1 - a, 2 - b, i, g * 3 + c]


class _Pair(nn.Module):
  """Two convolutions named as in a model, built from the given class."""

  conv_cls: type
  use_bias: bool
  dtype: object

  @nn.compact
  def __call__(self, x):
    make = lambda features, kernel, stride, groups, name: self.conv_cls(
        features, (kernel, kernel), strides=(stride, stride), padding=((kernel // 2,) * 2,) * 2,
        feature_group_count=groups, use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=layers.conv_kernel_init, name=name)
    x = make(8, 3, 2, 1, "conv1")(x)
    return make(8, 3, 1, 8, "depthwise")(nn.relu(x))


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_module_init_and_output_equal_nn_conv(use_bias, dtype):
  x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 9, 8, 3)), jnp.float32)
  key = jax.random.key(11)
  mine, theirs = _Pair(convolution.Conv, use_bias, dtype), _Pair(nn.Conv, use_bias, dtype)
  v_mine, v_theirs = mine.init(key, x), theirs.init(key, x)
  assert jax.tree_util.tree_structure(v_mine) == jax.tree_util.tree_structure(v_theirs)
  for a, b in zip(jax.tree_util.tree_leaves(v_mine), jax.tree_util.tree_leaves(v_theirs)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  shapes = jax.tree_util.tree_map(jnp.shape, v_mine["params"])
  assert shapes["conv1"]["kernel"] == (3, 3, 3, 8) and shapes["depthwise"]["kernel"] == (3, 3, 1, 8)
  if use_bias:  # Give the zero-initialised bias a value that shows.
    v_mine = v_theirs = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.5 if p[-1].key == "bias" else v, v_theirs)
  y, y_nn = mine.apply(v_mine, x), theirs.apply(v_theirs, x)
  assert y.dtype == y_nn.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_nn, np.float32))
  g, g_nn = (jax.grad(lambda v, m=m, p=p: jnp.sum(m.apply(p, v).astype(jnp.float32) ** 2))(x)
             for m, p in ((mine, v_mine), (theirs, v_theirs)))
  assert _max_rel(g, g_nn) <= TOLERANCE[dtype]


def test_module_accepts_extra_and_missing_batch_axes_like_nn_conv():
  x = jnp.asarray(np.random.default_rng(9).standard_normal((2, 3, 6, 6, 2)), jnp.float32)
  for inputs in (x, x[0, 0]):
    layer, ref = convolution.Conv(4, 3, padding="SAME"), nn.Conv(4, (3, 3), padding="SAME")
    params = ref.init(jax.random.key(0), inputs)
    np.testing.assert_array_equal(layer.apply(params, inputs), ref.apply(params, inputs))


@pytest.mark.parametrize("call", [
    lambda: convolution.conv_general(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 3, 4))),
    lambda: convolution.conv_general(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 3)), feature_group_count=2),
    lambda: convolution.conv_general(jnp.zeros((5, 5, 4)), jnp.zeros((3, 3, 4, 4))),
    lambda: convolution.conv_general(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 4, 4)), strides=0),
    lambda: convolution.conv_general(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 4, 4)), padding="CIRCULAR"),
])
def test_bad_arguments_raise_config_error(call):
  with pytest.raises(ConfigError):
    call()
