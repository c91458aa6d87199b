"""advjax.cpu.batchnorm: flax BatchNorm's arithmetic with a closed-form backward pass (models.norms.BatchNorm on CPU)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from advjax.cpu import batchnorm
from advjax.models import norms

SHAPE = (6, 5, 4, 3)  # N * H * W = 120 positions, 3 channels


def _variables():
  return {"params": {"scale": jnp.array([0.5, 1.5, -2.0]), "bias": jnp.array([0.1, -0.3, 2.0])},
          "batch_stats": {"mean": jnp.array([0.2, 0.0, -1.0]), "var": jnp.array([1.0, 2.0, 0.5])}}


def _x(seed=0):
  rng = np.random.default_rng(seed)
  # Channel offsets and spreads that differ, so centring and scaling both matter.
  return jnp.asarray(rng.normal(size=SHAPE) * np.array([1.0, 3.0, 0.5]) + np.array([0.5, -4.0, 3.0]),
                     jnp.float32)


def _numpy_train(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  mean, var = x.mean(0), x.var(0)
  return ((x - mean) / np.sqrt(var + eps) * scale + bias).reshape(SHAPE), mean, var


def _loss(module, mutable):
  """A loss that weighs outputs unevenly, so every gradient term is exercised."""
  w = jnp.asarray(np.random.default_rng(7).normal(size=SHAPE), jnp.float32)

  def loss(params, x):
    y, _ = module.apply({"params": params, "batch_stats": _variables()["batch_stats"]}, x, mutable=mutable)
    return jnp.sum(w * y * y) + jnp.sum(jnp.sin(y))

  return loss


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_train_mode_matches_numpy_and_flax(momentum):
  x = _x()
  ours = norms.BatchNorm(use_running_average=False, momentum=momentum)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=1e-5)
  y, state = ours.apply(_variables(), x, mutable=["batch_stats"])
  y_flax, state_flax = flax_bn.apply(_variables(), x, mutable=["batch_stats"])
  v = _variables()
  ref, mean, var = _numpy_train(x, np.asarray(v["params"]["scale"]), np.asarray(v["params"]["bias"]))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, y_flax, rtol=1e-5, atol=1e-5)
  old = v["batch_stats"]
  np.testing.assert_allclose(state["batch_stats"]["mean"], momentum * old["mean"] + (1 - momentum) * mean,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["var"], momentum * old["var"] + (1 - momentum) * var,
                             rtol=1e-5, atol=1e-6)
  for k in ("mean", "var"):
    np.testing.assert_allclose(state["batch_stats"][k], state_flax["batch_stats"][k], rtol=1e-5, atol=1e-6)


def test_gradients_match_autodiff_of_flax_batchnorm():
  x = _x(1)
  params = _variables()["params"]
  ours = jax.grad(_loss(norms.BatchNorm(use_running_average=False), ["batch_stats"]), (0, 1))(params, x)
  ref = jax.grad(_loss(nn.BatchNorm(use_running_average=False, epsilon=1e-5), ["batch_stats"]), (0, 1))(
      params, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_cotangents_of_the_statistics_are_exact():
  # A loss that reads the returned mean and variance: checked against finite differences in float64.
  x2 = np.random.default_rng(3).normal(size=(40, 2))
  scale, bias = jnp.array([1.3, 0.7]), jnp.array([0.0, 0.5])

  def f(x):
    y, mean, var = batchnorm.normalize_with_batch_statistics(x, scale, bias, 1e-5)
    return jnp.sum(y[:3]) + 3.0 * jnp.sum(mean * jnp.array([1.0, -2.0])) + jnp.sum(var * var)

  with jax.enable_x64():
    xj = jnp.asarray(x2, jnp.float64)
    grad = np.asarray(jax.grad(f)(xj))
    eps, numeric = 1e-6, np.zeros_like(x2)
    for i in range(x2.shape[0]):
      for j in range(2):
        d = np.zeros_like(x2)
        d[i, j] = eps
        numeric[i, j] = (f(xj + d) - f(xj - d)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_eval_mode_uses_running_statistics_and_changes_nothing():
  x = _x(2)
  v = _variables()
  y, state = norms.BatchNorm(use_running_average=True).apply(v, x, mutable=["batch_stats"])
  s = v["batch_stats"]
  ref = (np.asarray(x) - s["mean"]) / np.sqrt(np.asarray(s["var"]) + 1e-5) * v["params"]["scale"] + v["params"]["bias"]
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(state["batch_stats"]["mean"], s["mean"])


def test_init_creates_flax_paths_without_updating():
  module = norms.BatchNorm(use_running_average=False, zero_init=True)
  v = module.init(jax.random.key(0), _x())
  flax_v = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), _x())
  assert jax.tree.structure(v) == jax.tree.structure(flax_v)
  np.testing.assert_array_equal(v["params"]["scale"], 0.0)
  np.testing.assert_array_equal(v["batch_stats"]["mean"], 0.0)
  np.testing.assert_array_equal(v["batch_stats"]["var"], 1.0)


def test_bfloat16_output_and_float32_statistics():
  x = _x().astype(jnp.bfloat16)
  y, state = norms.BatchNorm(use_running_average=False, dtype=jnp.bfloat16).apply(
      _variables(), x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16 and state["batch_stats"]["mean"].dtype == jnp.float32
  v = _variables()
  ref, _, _ = _numpy_train(np.asarray(x, np.float32), np.asarray(v["params"]["scale"]),
                           np.asarray(v["params"]["bias"]))
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=2e-2, atol=5e-2)


def test_batch_sharded_over_eight_devices_matches_one_device():
  # The statistics are global over the batch, as one device computes them.
  x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 4, 4, 3)), jnp.float32)
  mesh = jax.make_mesh((8,), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  module = norms.BatchNorm(use_running_average=False)
  apply = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))
  y1, s1 = apply(_variables(), x)
  y8, s8 = apply(_variables(), xs)
  np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s8["batch_stats"]["var"], s1["batch_stats"]["var"], rtol=1e-5)
