"""Iterative DeepFool universal perturbations (algorithm 1) on the tiny digits CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import deepfool, threat
from advjax.attacks.universal_deepfool import UniversalDeepFoolConfig, fooling_rate, universal_deepfool
from advjax.errors import ConfigError
from tests.attacks import tiny_models


@pytest.fixture(scope="module")
def points():
  """X: 256 training digits [256, 8, 8, 1] in [0, 1]."""
  return tiny_models.digits()[0][:256]


def _clean(logits_fn, x):
  return np.argmax(np.asarray(logits_fn(jnp.asarray(x))), -1)


@pytest.fixture(scope="module")
def linf_result(logits_fn, points):
  # DeepFool gets the iterations to converge from x + v (the reference's 10
  # leave some points unconverged, and their steps are dropped).
  cfg = UniversalDeepFoolConfig(eps=64.0, xi=0.0, max_passes=3, batch_size=32,
                                deepfool=deepfool.DeepFoolConfig(num_steps=50))
  return cfg, universal_deepfool(logits_fn, points, jax.random.PRNGKey(0), cfg)


def test_linf_perturbation_is_in_the_ball_and_fools_far_more_than_noise(logits_fn, points, linf_result):
  cfg, (v, rates) = linf_result
  eps = threat.to_unit(cfg.eps)
  assert v.shape == (8, 8, 1)
  assert float(jnp.max(jnp.abs(v))) <= eps + 1e-7
  assert len(rates) == 3 and np.all((0 <= rates) & (rates <= 1))
  np.testing.assert_allclose(rates[-1], fooling_rate(logits_fn, points, v, _clean(logits_fn, points)))
  # Random corners of the same ball fool the model far less than the universal perturbation.
  noise_rate = np.mean([
      fooling_rate(logits_fn, points, eps * jnp.sign(jax.random.normal(jax.random.PRNGKey(k), v.shape)),
                   _clean(logits_fn, points)) for k in range(4)])
  assert rates[-1] > 0.3 and rates[-1] > 2 * noise_rate
  # It is universal: it transfers to held-out digits.
  x_test = tiny_models.digits()[2]
  assert fooling_rate(logits_fn, x_test, v, _clean(logits_fn, x_test)) > 0.3


def test_l2_perturbation_is_in_the_ball(logits_fn, points):
  cfg = UniversalDeepFoolConfig(eps=255.0, norm="l2", xi=0.0, max_passes=1, batch_size=32)
  v, rates = universal_deepfool(logits_fn, points, jax.random.PRNGKey(0), cfg)
  assert float(jnp.sqrt(jnp.sum(v ** 2))) <= 1.0 + 1e-5
  assert rates[0] > 0


def test_stops_once_the_fooling_ratio_reaches_one_minus_xi(logits_fn, points, linf_result):
  """Same run as `linf_result` but stopping at the first pass whose ratio reaches 1 - xi."""
  cfg, (_, full_rates) = linf_result
  target = float(full_rates[0]) / 2
  early = UniversalDeepFoolConfig(eps=cfg.eps, xi=1.0 - target, max_passes=3, batch_size=cfg.batch_size,
                                  deepfool=cfg.deepfool)
  _, rates = universal_deepfool(logits_fn, points, jax.random.PRNGKey(0), early)
  assert len(rates) == 1 and rates[0] >= target
  np.testing.assert_allclose(rates, full_rates[:1])


def test_batch_of_one_is_the_sequential_algorithm(logits_fn, points):
  """batch_size = 1 against a plain loop over the points, written straight from algorithm 1."""
  x = points[:12]
  cfg = UniversalDeepFoolConfig(eps=64.0, xi=0.0, max_passes=1, batch_size=1, shuffle=False)
  v_batched, _ = universal_deepfool(logits_fn, x, jax.random.PRNGKey(0), cfg)

  eps = threat.to_unit(cfg.eps)
  clean = _clean(logits_fn, x)
  v = jnp.zeros(x.shape[1:])
  updates = 0
  for x_i, y_i in zip(x, clean):
    x_v = threat.apply(x_i[None], v)
    if _clean(logits_fn, x_v)[0] == y_i:
      r = deepfool.deepfool(logits_fn, x_v, jnp.asarray([y_i]), jax.random.PRNGKey(0), cfg.deepfool) - x_v
      v = jnp.clip(v + r[0], -eps, eps)
      updates += 1
  assert updates >= 2
  np.testing.assert_allclose(np.asarray(v_batched), np.asarray(v), atol=1e-5)


def test_bad_config_names_the_field():
  with pytest.raises(ConfigError, match="xi"):
    UniversalDeepFoolConfig(xi=1.0)
  with pytest.raises(ConfigError, match="batch_size"):
    UniversalDeepFoolConfig(batch_size=0)


def test_only_converged_deepfool_steps_are_added(logits_fn, points):
  """As the authors' code: a point DeepFool could not fool within its budget adds nothing to v.

  One pass over one mini-batch of 32 points from v = 0 with a large ball: v is
  the sum of the DeepFool steps of exactly the points that converged.
  """
  x = jnp.asarray(points[:32])
  clean = jnp.asarray(_clean(logits_fn, points[:32]))
  budget = deepfool.DeepFoolConfig(num_steps=5)
  info = deepfool.deepfool_with_info(logits_fn, x, clean, jax.random.PRNGKey(0), budget)
  assert 0 < float(jnp.mean(info.fooled)) < 1  # Some points converge within 5 iterations, some do not.
  cfg = UniversalDeepFoolConfig(eps=255.0, xi=0.0, max_passes=1, batch_size=32, shuffle=False, deepfool=budget)
  v, _ = universal_deepfool(logits_fn, points[:32], jax.random.PRNGKey(0), cfg)
  steps = np.asarray(info.x_adv - x)

  def fold(keep):
    out = np.zeros(steps.shape[1:], np.float32)
    for r, k in zip(steps, keep):
      if k:
        out = np.clip(out + r, -1.0, 1.0)
    return out

  np.testing.assert_allclose(np.asarray(v), fold(np.asarray(info.fooled)), atol=1e-5)
  assert not np.allclose(np.asarray(v), fold(np.ones(32, bool)), atol=1e-3)


def test_deepfool_stops_when_every_example_is_fooled(logits_fn, points):
  x = jnp.asarray(points[:32])
  y = jnp.asarray(_clean(logits_fn, points[:32]))
  long = deepfool.deepfool_with_info(logits_fn, x, y, jax.random.PRNGKey(0), deepfool.DeepFoolConfig(num_steps=500))
  short = deepfool.deepfool_with_info(logits_fn, x, y, jax.random.PRNGKey(0), deepfool.DeepFoolConfig(num_steps=50))
  # Every example converges within a few iterations, and the result does not depend on the budget.
  assert bool(jnp.all(long.fooled)) and int(jnp.max(long.iterations)) < 50
  np.testing.assert_array_equal(np.asarray(long.x_adv), np.asarray(short.x_adv))
  # The loop ran only as many iterations as the slowest example needed: count the model's traces' calls.
  calls = []

  def counting(images):
    jax.debug.callback(lambda: calls.append(1))
    return logits_fn(images)

  deepfool.deepfool_with_info(counting, x, y, jax.random.PRNGKey(0), deepfool.DeepFoolConfig(num_steps=500))
  # One clean pass, one pass per iteration (+1 that finds nobody active), one final pass.
  assert len(calls) <= int(jnp.max(long.iterations)) + 3
