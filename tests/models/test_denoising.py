"""Feature denoising operations and blocks (Xie thesis, ch. 4) against NumPy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from numpy.lib.stride_tricks import sliding_window_view

from advjax.errors import ConfigError
from advjax.models import blocks, denoising as dn
from advjax.models.norms import BN_EPSILON

SHAPE = (2, 6, 6, 4)


def _normal(shape, seed=0, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _trained_like(variables, seed=0):
  """Random non-zero values of `variables`' structure: what a block looks like after training."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("var", "scale"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    return jnp.asarray(0.5 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, variables)


# ------------------------------------------------------------ NumPy references


def _np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _np_flat(x):
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1, x.shape[-1])


def _np_nonlocal_dot(x, keys):
  """y_i = (1 / N) sum_j (x_i^T k_j) k_j, as the [HW, N] affinity in float64."""
  xf, kf = _np_flat(x), _np_flat(keys)
  y = (xf @ kf.transpose(0, 2, 1)) @ kf / kf.shape[1]
  return y.reshape(x.shape)


def _np_pool2(x):
  """2x2 max pooling, stride 2, odd sizes rounded up."""
  b, h, w, c = x.shape
  padded = np.full((b, h + h % 2, w + w % 2, c), -np.inf)
  padded[:, :h, :w] = x
  return padded.reshape(b, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2, c).max(axis=(2, 4))


def _np_bilateral(x, queries=None, keys=None):
  """Eq. 4.2 over the in-map 3x3 neighbours, one position at a time (Gaussian if queries given)."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  y = np.zeros_like(x)
  for n in range(b):
    for i in range(h):
      for j in range(w):
        nbrs = [(p, q) for p in range(i - 1, i + 2) for q in range(j - 1, j + 2) if 0 <= p < h and 0 <= q < w]
        vals = np.stack([x[n, p, q] for p, q in nbrs])
        if queries is None:
          weights = vals @ x[n, i, j] / len(nbrs)
        else:
          d = queries.shape[-1]
          ks = np.stack([np.asarray(keys, np.float64)[n, p, q] for p, q in nbrs])
          weights = _np_softmax(ks @ np.asarray(queries, np.float64)[n, i, j] / np.sqrt(d))
        y[n, i, j] = weights @ vals
  return y


def _np_reflect(x):
  return np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")


def _np_median(x):
  windows = sliding_window_view(_np_reflect(x), (3, 3), axis=(1, 2))  # [B, H, W, C, 3, 3]
  return np.median(windows, axis=(-2, -1))


def _np_block(x, denoised, params, stats, use_conv=True, residual=True):
  """x + BN(conv1x1(D(x))) with BN's running statistics, in float64."""
  h = np.asarray(denoised, np.float64)
  if use_conv:
    h = h @ np.asarray(params["conv"]["kernel"][0, 0], np.float64)
  bn, st = params["bn"], stats["bn"]
  h = (h - st["mean"]) / np.sqrt(np.asarray(st["var"], np.float64) + BN_EPSILON) * bn["scale"] + bn["bias"]
  return np.asarray(x, np.float64) + h if residual else h


# ------------------------------------------------------------------ operations


def test_gaussian_weights_sum_to_one_and_match_softmax():
  q, k, v = _normal((2, 6, 6, 2), 1), _normal((2, 6, 6, 2), 2), _normal(SHAPE, 3)
  w = np.asarray(dn.gaussian_weights(q, k))
  assert w.shape == (2, 36, 36)
  np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-6)
  ref = _np_softmax(_np_flat(q) @ _np_flat(k).transpose(0, 2, 1) / np.sqrt(2))
  np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-7)
  y = dn.nonlocal_gaussian(q, k, v)
  np.testing.assert_allclose(y, (ref @ _np_flat(v)).reshape(SHAPE), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [SHAPE, (2, 2, 2, 8)])
def test_dot_product_divides_by_n_in_both_orders(shape):
  x = _normal(shape, 4)
  ref = _np_nonlocal_dot(x, x)
  channels, positions = shape[-1], shape[1] * shape[2]
  assert dn.dot_order(channels, positions) == ("gram" if channels < positions else "affinity")
  for order in ("gram", "affinity", "auto"):
    np.testing.assert_allclose(dn.nonlocal_dot(x, order=order), ref, rtol=1e-5, atol=1e-5, err_msg=order)


def test_dot_order_picks_the_cheaper_matrix():
  assert dn.dot_order(4, 36) == "gram"
  assert dn.dot_order(8, 4) == "affinity"
  assert dn.dot_order(256, 3136) == "gram"
  with pytest.raises(ConfigError, match="order"):
    dn.nonlocal_dot(jnp.zeros(SHAPE), order="fast")


@pytest.mark.parametrize("shape", [SHAPE, (2, 5, 7, 3)])
def test_median_matches_numpy(shape):
  x = _normal(shape, 5)
  np.testing.assert_array_equal(dn.median_filter(x), _np_median(x).astype(np.float32))


@pytest.mark.parametrize("shape", [SHAPE, (2, 5, 7, 3)])
def test_mean_matches_average_pooling_of_reflected_map(shape):
  x = _normal(shape, 6)
  ref = nn.avg_pool(jnp.asarray(_np_reflect(x)), (3, 3), strides=(1, 1), padding="VALID")
  np.testing.assert_allclose(dn.mean_filter(x), ref, rtol=1e-6, atol=1e-6)


def test_bilateral_matches_numpy_with_borders_excluded():
  x, q, k = _normal((1, 4, 5, 3), 7), _normal((1, 4, 5, 2), 8), _normal((1, 4, 5, 2), 9)
  np.testing.assert_allclose(dn.bilateral_dot(x), _np_bilateral(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dn.bilateral_gaussian(q, k, x), _np_bilateral(x, q, k), rtol=1e-5, atol=1e-6)


def test_bilateral_over_the_whole_map_is_nonlocal():
  shape = (2, 3, 4, 4)
  x, q, k = _normal(shape, 10), _normal((2, 3, 4, 2), 11), _normal((2, 3, 4, 2), 12)
  size = 2 * max(shape[1:3]) - 1  # reaches every position from every position
  np.testing.assert_allclose(dn.bilateral_dot(x, size), dn.nonlocal_dot(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dn.bilateral_gaussian(q, k, x, size), dn.nonlocal_gaussian(q, k, x),
                             rtol=1e-5, atol=1e-6)
  # A 3x3 neighbourhood on the same map is genuinely local.
  assert not np.allclose(dn.bilateral_dot(x), dn.nonlocal_dot(x), atol=1e-3)
  with pytest.raises(ConfigError, match="odd"):
    dn.bilateral_dot(x, 4)


@pytest.mark.parametrize("shape", [SHAPE, (2, 5, 7, 4)])
def test_key_subsampling_matches_numpy(shape):
  x = _normal(shape, 13)
  pooled = _np_pool2(x)
  np.testing.assert_array_equal(dn.subsample_keys(x), pooled.astype(np.float32))
  np.testing.assert_allclose(dn.nonlocal_dot(x, dn.subsample_keys(x)), _np_nonlocal_dot(x, pooled),
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- block


@pytest.mark.parametrize("operation", dn.OPERATIONS)
@pytest.mark.parametrize("use_conv", [True, False])
def test_fresh_block_is_identity(operation, use_conv):
  x = _normal(SHAPE, 14, scale=3.0)
  block = dn.DenoisingBlock(operation, use_conv=use_conv)
  variables = block.init(jax.random.key(0), x, False)
  np.testing.assert_array_equal(block.apply(variables, x, False), x)
  y, _ = block.apply(variables, x, True, mutable=["batch_stats"])
  np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("operation,norm,placement,dtype", [
    ("nonlocal_gaussian", "batchnorm", "block", jnp.float32),
    ("nonlocal_dot", "groupnorm", "block", jnp.float32),
    ("bilateral_gaussian", "none", "stage", jnp.float32),
    ("median", "batchnorm", "stage", jnp.bfloat16),
])
def test_fresh_block_is_identity_for_other_settings(operation, norm, placement, dtype):
  x = jnp.asarray(_normal(SHAPE, 15, scale=3.0), dtype)
  block = dn.DenoisingBlock(operation, norm=norm, placement=placement, dtype=dtype)
  variables = block.init(jax.random.key(0), x, False)
  y = block.apply(variables, x, False)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))


@pytest.mark.parametrize("operation,use_conv,residual", [
    ("nonlocal_dot", True, True),
    ("nonlocal_dot", False, True),
    ("mean", True, False),
    ("null", True, True),
])
def test_trained_block_matches_numpy(operation, use_conv, residual):
  x = _normal(SHAPE, 16)
  block = dn.DenoisingBlock(operation, use_conv=use_conv, residual=residual)
  variables = _trained_like(block.init(jax.random.key(0), x, False), 1)
  y = np.asarray(block.apply(variables, x, False))
  denoised = {"nonlocal_dot": _np_nonlocal_dot(x, x), "mean": np.asarray(dn.mean_filter(x)), "null": x}[operation]
  ref = _np_block(x, denoised, variables["params"], variables["batch_stats"], use_conv, residual)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  assert np.abs(y - x).mean() > 0.1  # the block does change x once its scale is non-zero


def test_block_placement_subsamples_dot_product_keys():
  x = _normal((2, 5, 6, 4), 17)
  block = dn.DenoisingBlock("nonlocal_dot", placement="block")
  variables = _trained_like(block.init(jax.random.key(0), x, False), 2)
  ref = _np_block(x, _np_nonlocal_dot(x, _np_pool2(x)), variables["params"], variables["batch_stats"])
  np.testing.assert_allclose(block.apply(variables, x, False), ref, rtol=1e-5, atol=1e-5)
  full = _np_block(x, _np_nonlocal_dot(x, x), variables["params"], variables["batch_stats"])
  assert not np.allclose(ref, full, atol=1e-3)


def test_gaussian_block_embeds_into_half_the_channels():
  x = jnp.zeros((1, 2, 2, 64))
  params = dn.DenoisingBlock("nonlocal_gaussian").init(jax.random.key(0), x, False)["params"]
  for name in ("theta", "phi"):
    kernel = np.asarray(params[name]["kernel"])
    assert kernel.shape == (1, 1, 64, 32)
    assert 0.009 < kernel.std() < 0.011
  assert params["conv"]["kernel"].shape == (1, 1, 64, 64)
  np.testing.assert_array_equal(params["bn"]["scale"], 0.0)


@pytest.mark.parametrize("operation,placement", [("nonlocal_gaussian", "block"), ("bilateral_gaussian", "stage")])
def test_block_sharded_over_eight_devices_matches_one(operation, placement):
  devices = jax.devices()
  assert len(devices) == 8
  x = _normal((8, 6, 6, 4), 18)
  block = dn.DenoisingBlock(operation, placement=placement)
  variables = _trained_like(block.init(jax.random.key(0), x, False), 3)
  apply = jax.jit(lambda v, x: block.apply(v, x, True, mutable=["batch_stats"]))
  y1, s1 = apply(jax.device_put(variables, devices[0]), jax.device_put(x, devices[0]))
  mesh = Mesh(np.array(devices), ("batch",))
  y8, s8 = apply(jax.device_put(variables, NamedSharding(mesh, P())),
                 jax.device_put(x, NamedSharding(mesh, P("batch"))))
  assert len(y8.addressable_shards) == 8 and y8.addressable_shards[0].data.shape == (1, 6, 6, 4)
  # Batch statistics are reduced across devices in another order; BatchNorm divides by a
  # channel's std (about 0.1 here, against a mean of 0.7), which magnifies that rounding
  # to ~6e-5 in the output.
  np.testing.assert_allclose(y8, y1, rtol=2e-4, atol=2e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s8, s1)
  assert np.abs(np.asarray(y1) - x).mean() > 0.1


# Measured max |y_bf16 - y_f32| / max |y_f32| over these operations: 0.003 to 0.009 (bfloat16
# keeps 8 significant bits, 2^-8 = 0.004 per rounding, several roundings deep).
BF16_TOLERANCE = 0.02


@pytest.mark.parametrize("operation", dn.OPERATIONS)
def test_bfloat16_close_to_float32(operation):
  x = _normal(SHAPE, 19)
  block32 = dn.DenoisingBlock(operation)
  block16 = dn.DenoisingBlock(operation, dtype=jnp.bfloat16)
  variables = _trained_like(block32.init(jax.random.key(0), x, False), 4)
  y32 = np.asarray(block32.apply(variables, x, False))
  y16 = block16.apply(variables, jnp.asarray(x, jnp.bfloat16), False)
  assert y16.dtype == jnp.bfloat16
  err = np.abs(np.asarray(y16, np.float32) - y32).max() / np.abs(y32).max()
  assert err < BF16_TOLERANCE, err


def test_block_gradients_are_finite():
  x = _normal(SHAPE, 20)
  for operation in ("bilateral_gaussian", "median", "nonlocal_gaussian"):
    block = dn.DenoisingBlock(operation)
    variables = _trained_like(block.init(jax.random.key(0), x, False), 5)
    g = jax.jit(jax.grad(lambda x: jnp.sum(block.apply(variables, x, False) ** 2)))(x)
    assert np.isfinite(g).all() and np.abs(g).max() > 0, operation


# -------------------------------------------------------------------- registry


def test_registry_builds_blocks_from_names():
  build = lambda spec, placement="stage": blocks.make_block(spec, norm="groupnorm", dtype=jnp.bfloat16,
                                                             placement=placement, name="stage2_denoise")
  block = build("denoise:nonlocal_gaussian", "block")
  assert isinstance(block, dn.DenoisingBlock)
  assert (block.operation, block.use_conv, block.residual) == ("nonlocal_gaussian", True, True)
  assert (block.norm, block.dtype, block.placement, block.name) == ("groupnorm", jnp.bfloat16, "block",
                                                                    "stage2_denoise")
  block = build("denoise:mean,no_conv")
  assert (block.operation, block.use_conv, block.residual) == ("mean", False, True)
  block = build("denoise:median,no_residual,no_conv")
  assert (block.operation, block.use_conv, block.residual) == ("median", False, False)
  params = block.init(jax.random.key(0), jnp.zeros(SHAPE), False)["params"]
  assert set(params) == {"bn"}
  for bad, match in [("denoise:gaussian", "denoising operation"), ("denoise:mean,no_bn", "no_bn"),
                     ("denoise", "bad arguments")]:
    with pytest.raises(ConfigError, match=match):
      build(bad)
  with pytest.raises(ConfigError, match="placement"):
    dn.DenoisingBlock("mean", placement="everywhere")


def test_dot_product_block_takes_the_order_it_is_given():
  """'gram' and 'affinity' compute the same block; their cost is the matrix each builds:
  [C, C] (N C^2 multiply-adds twice) or [N, N] (N^2 C twice), counted from the trace."""
  from benchmarks import harness
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))  # N = 36 positions, C = 4 channels
  outputs, flops = {}, {}
  for order in ("gram", "affinity"):
    block = blocks.make_block(f"denoise:nonlocal_dot,{order}", norm="batchnorm", dtype=jnp.float32,
                              placement="stage", name="stage1_denoise")
    assert block.dot_order == order
    variables = block.init(jax.random.key(0), x, False)
    variables = jax.tree.map(lambda v: v + 0.5, variables)  # A non-zero BN scale: the branch shows.
    outputs[order] = block.apply(variables, x, False)
    denoise = lambda x, order=order: dn.nonlocal_dot(x, order=order)
    flops[order] = harness.matmul_flops(denoise, x)
  np.testing.assert_allclose(outputs["gram"], outputs["affinity"], rtol=1e-5, atol=1e-5)
  assert flops == {"gram": 2 * 2 * 2 * 36 * 4 * 4, "affinity": 2 * 2 * 2 * 36 * 36 * 4}
  with pytest.raises(ConfigError, match="nonlocal_dot only"):
    blocks.make_block("denoise:mean,gram", norm="batchnorm", dtype=jnp.float32, placement="stage", name="b")
  with pytest.raises(ConfigError, match="at most one computation order"):
    blocks.make_block("denoise:nonlocal_dot,gram,affinity", norm="batchnorm", dtype=jnp.float32,
                      placement="stage", name="b")


def test_median_of_nine_network_matches_a_sort_and_routes_each_gradient_to_one_value():
  rng = np.random.default_rng(0)
  # Small integers: many ties, where a network's choices could go wrong.
  values = [jnp.asarray(rng.integers(0, 4, (64, 5)).astype(np.float32)) for _ in range(9)]
  expected = np.sort(np.stack(values, -1), -1)[..., 4]
  np.testing.assert_array_equal(dn.median_of_nine(values), expected)
  # Every permutation of the inputs gives the same median.
  for perm in (rng.permutation(9) for _ in range(5)):
    np.testing.assert_array_equal(dn.median_of_nine([values[i] for i in perm]), expected)
  grads = jax.grad(lambda vs: jnp.sum(dn.median_of_nine(vs)))(values)
  grads = np.stack(grads, -1)
  assert set(np.unique(grads)) == {0.0, 1.0} and np.all(grads.sum(-1) == 1.0)
  chosen = np.take_along_axis(np.stack(values, -1), grads.argmax(-1)[..., None], -1)[..., 0]
  np.testing.assert_array_equal(chosen, expected)
  # The 0-1 principle: a compare-exchange network that selects the median of every
  # 0/1 input selects the median of every input. All 512 of them:
  bits = (np.arange(512)[:, None] >> np.arange(9)) & 1
  np.testing.assert_array_equal(dn.median_of_nine([jnp.asarray(b) for b in bits.T]), np.median(bits, -1))
