"""The iterative core: feasibility, strength, exact reductions, restarts, compiles, memory."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax.attacks import core, losses, make_logits_fn, threat
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError
from tests.attacks import tiny_models

KEY = jax.random.key(42)


def _ce(logits_fn, x, y):
  return np.asarray(losses.cross_entropy(logits_fn(x), y))


FEASIBILITY = [
    pgd_lib.fgsm(8.0),
    pgd_lib.pgd(8.0, num_steps=3, init="mixed"),
    pgd_lib.pgd(8.0, num_steps=3, step_rule="adam", loss="margin"),
    pgd_lib.mi_fgsm(8.0, step_size=4.0, num_steps=3),
    pgd_lib.m_di2_fgsm(8.0, step_size=4.0, num_steps=3, diversity_prob=1.0),
    pgd_lib.pgd(200.0, step_size=60.0, num_steps=3, norm="l2"),
    pgd_lib.pgd(200.0, step_size=60.0, num_steps=3, norm="l2", step_rule="momentum",
                init="mixed"),
]


@pytest.mark.parametrize("cfg", FEASIBILITY, ids=lambda c: f"{c.norm}-{c.step_rule}-{c.init}")
def test_results_stay_in_ball_and_box(cfg, logits_fn, batch):
  x, y = batch
  x_adv = pgd_lib.attack(logits_fn, x, y, KEY, cfg)
  d = np.asarray(x_adv - x).reshape(x.shape[0], -1)
  eps = cfg.eps / 255
  if cfg.norm == "linf":
    assert np.abs(d).max() <= eps + 1e-6
    assert np.abs(d).max() >= eps - 1e-6  # the ball is used, not just respected
  else:
    assert np.linalg.norm(d, axis=1).max() <= eps * (1 + 1e-5)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_attack_raises_the_loss(logits_fn, batch):
  x, y = batch
  for cfg in (pgd_lib.fgsm(16.0), pgd_lib.pgd(16.0, num_steps=10)):
    x_adv = pgd_lib.attack(logits_fn, x, y, KEY, cfg)
    clean, adv = _ce(logits_fn, x, y), _ce(logits_fn, x_adv, y)
    assert np.all(adv >= clean - 1e-5) and adv.mean() > 3 * clean.mean()
  acc = np.mean(np.asarray(jnp.argmax(logits_fn(x_adv), -1) == y))
  assert acc < 0.8


def test_targeted_and_predicted_labels(logits_fn, batch):
  x, y = batch
  targets = (y + 1) % 10
  cfg = pgd_lib.pgd(32.0, step_size=4.0, num_steps=10, targeted=True)
  x_adv = pgd_lib.attack(logits_fn, x, y, KEY, cfg, targets=targets)
  p_clean = jax.nn.softmax(logits_fn(x))[jnp.arange(32), targets]
  p_adv = jax.nn.softmax(logits_fn(x_adv))[jnp.arange(32), targets]
  assert float(jnp.mean(p_adv)) > float(jnp.mean(p_clean)) + 0.1
  # x is correctly classified, so predicted labels equal true labels here.
  cfg = pgd_lib.pgd(16.0, init="zero")
  np.testing.assert_array_equal(
      pgd_lib.attack(logits_fn, x, y, KEY, cfg),
      pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(cfg, labels="predicted")))


def test_di2_fgsm_with_p0_is_ifgsm_bitwise(logits_fn, batch):
  x, y = batch
  ifgsm = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.bim(16.0, step_size=2.0))
  di = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.di2_fgsm(16.0, 2.0, diversity_prob=0.0))
  np.testing.assert_array_equal(np.asarray(ifgsm), np.asarray(di))
  di_on = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.di2_fgsm(16.0, 2.0, diversity_prob=1.0))
  assert not np.array_equal(np.asarray(ifgsm), np.asarray(di_on))


def test_mi_fgsm_with_mu0_is_ifgsm_bitwise(logits_fn, batch):
  x, y = batch
  ifgsm = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.bim(16.0, step_size=2.0))
  mi0 = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.mi_fgsm(16.0, 2.0, momentum=0.0))
  np.testing.assert_array_equal(np.asarray(ifgsm), np.asarray(mi0))
  mi1 = pgd_lib.attack(logits_fn, x, y, KEY, pgd_lib.mi_fgsm(16.0, 2.0, momentum=1.0))
  assert not np.array_equal(np.asarray(ifgsm), np.asarray(mi1))


@pytest.mark.parametrize("select", core.RESTART_SELECTIONS)
def test_restarts_never_weaken(select, logits_fn, batch):
  x, y = batch
  base = pgd_lib.pgd(8.0, num_steps=3, restart_select=select)
  one = pgd_lib.attack(logits_fn, x, y, KEY, base)
  many = pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(base, restarts=4))
  wrong = lambda a: np.asarray(jnp.argmax(logits_fn(a), -1) != y)
  if select == "loss":
    assert np.all(_ce(logits_fn, many, y) >= _ce(logits_fn, one, y) - 1e-5)
    assert np.any(_ce(logits_fn, many, y) > _ce(logits_fn, one, y) + 1e-4)
  else:
    assert np.all(wrong(many) >= wrong(one))


@pytest.mark.parametrize("select", core.RESTART_SELECTIONS)
def test_parallel_restarts_equal_the_loop(select, logits_fn, batch):
  x, y = batch
  base = pgd_lib.pgd(8.0, num_steps=3, restarts=3, restart_select=select)
  parallel = np.asarray(pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(base, parallel_restarts=True)))
  looped = np.asarray(pgd_lib.attack(logits_fn, x, y, KEY, base))
  np.testing.assert_allclose(parallel, looped, atol=1e-6)
  # The selection picks later restarts for some examples (else both could be restart 0 alone).
  first = np.asarray(pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(base, restarts=1)))
  assert not np.allclose(parallel, first, atol=1e-6)


def test_no_recompilation_for_same_shapes(model_and_variables, batch):
  model, variables = model_and_variables

  # A trace of the attack calls the model twice (the ascent's objective, the final scoring); the
  # attack is traced twice: without an eps override and with a traced one, whatever its value.
  @chex.assert_max_traces(n=4)
  def logits_fn(x):
    return model.apply(variables, x)

  x, y = batch
  cfg = pgd_lib.pgd(8.0, num_steps=2)
  pgd_lib.attack(logits_fn, x, y, KEY, cfg)
  pgd_lib.attack(logits_fn, x + 0.01, y, jax.random.key(7), cfg)
  for eps in (4.0, 12.0, 3.0):
    pgd_lib.attack(logits_fn, x, y, KEY, cfg, eps=eps)
  with pytest.raises(AssertionError, match="traced > 4 times"):
    pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(cfg, num_steps=3))  # Another program.


def test_memory_does_not_grow_with_steps(logits_fn, batch):
  x, y = batch

  def temp_bytes(steps):
    cfg = pgd_lib.pgd(8.0, num_steps=steps, step_rule="momentum")
    compiled = pgd_lib.attack.lower(logits_fn, x, y, KEY, cfg).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(100) <= temp_bytes(5)


def test_annealed_schedule_sums_to_beta_eps():
  cfg = pgd_lib.AttackConfig(step_schedule="annealed", num_steps=20, beta=4.0, gamma=0.9)
  sizes = pgd_lib.resolve_sizes(cfg, eps=jnp.float32(10.0))
  alpha = cfg.step_sizes(sizes.eps)
  steps = np.array([float(alpha(k)) for k in range(20)])
  np.testing.assert_allclose(steps.sum(), 4.0 * 10.0 / 255, rtol=1e-5)
  np.testing.assert_allclose(steps[1:] / steps[:-1], 0.9, rtol=1e-5)


def test_core_optimises_a_shared_perturbation(logits_fn, batch):
  """delta [heaps, 1, H, W, C] broadcast over x [heaps, s, H, W, C]: the heap set-up."""
  x, y = batch
  heaps, s = 4, 8
  xh, yh = x.reshape(heaps, s, 8, 8, 1), y.reshape(heaps, s)
  cfg = pgd_lib.pgd(16.0, num_steps=5, init="uniform")
  sizes = pgd_lib.resolve_sizes(cfg)

  def group_loss(delta):
    logits = logits_fn(threat.apply(xh, delta).reshape(-1, 8, 8, 1))
    return losses.cross_entropy(logits, yh.reshape(-1)).reshape(heaps, s).mean(axis=1)

  def objective(delta, key):
    del key
    return jnp.sum(group_loss(delta))

  ball = pgd_lib.threat_model(cfg, sizes)
  delta0 = ball.init(jax.random.key(3), (heaps, 1, 8, 8, 1), cfg.init)
  project = ball.project
  delta = jax.jit(lambda d: pgd_lib.optimize_perturbation(
      objective, d, KEY, cfg, sizes, project))(delta0)
  assert delta.shape == (heaps, 1, 8, 8, 1)
  assert float(jnp.abs(delta).max()) <= sizes.eps + 1e-6
  assert np.all(np.asarray(group_loss(delta)) > np.asarray(group_loss(jnp.zeros_like(delta))))


def test_from_config_and_validation():
  c = ml_collections.ConfigDict(dict(eps=4, step_size=1, num_steps=7, init="mixed",
                                     step_rule="momentum", momentum=0.5))
  cfg = pgd_lib.AttackConfig.from_config(c)
  assert cfg.eps == 4.0 and isinstance(cfg.eps, float) and cfg.num_steps == 7
  hash(cfg)
  for bad, field in ((dict(norm="l3"), "norm"), (dict(num_steps=2.5), "num_steps"),
                     (dict(diversity_prob=1.5), "diversity_prob"), (dict(epss=3), "epss"),
                     (dict(loss="clipped_cross_entropy", targeted=True), "targeted"),
                     (dict(step_rule="optax:adam"), "step_rule"), (dict(restarts=0), "restarts"),
                     (dict(eps=1e7), "eps"), (dict(eps=float("nan")), "eps"),
                     (dict(step_size=float("inf")), "step_size"), (dict(bn_mode="eval"), "bn_mode")):
    with pytest.raises(ConfigError, match=field):
      pgd_lib.AttackConfig.from_config(bad)


def test_batch_norm_mode_is_explicit():
  model, variables = tiny_models.trained(batchnorm=True, steps=30)
  x = jnp.asarray(tiny_models.digits()[2][:16])
  eval_fn = make_logits_fn(model, variables, "eval")
  batch_fn = make_logits_fn(model, variables, "batch")
  np.testing.assert_allclose(eval_fn(x), model.apply(variables, x), rtol=1e-6)
  # 'batch' normalises with the attacked batch's statistics: the same logits as
  # a network whose running statistics are replaced by that batch's mean and variance.
  conv = variables["params"]["Conv_0"]
  h = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
  stats = {"mean": h.mean(axis=(0, 1, 2)), "var": h.var(axis=(0, 1, 2))}
  key = next(iter(variables["batch_stats"]))
  replaced = {**variables, "batch_stats": {key: stats}}
  np.testing.assert_allclose(batch_fn(x), model.apply(replaced, x), rtol=1e-4, atol=1e-5)
  assert not np.allclose(eval_fn(x), batch_fn(x), atol=1e-3)
  with pytest.raises(ConfigError, match="bn_mode"):
    make_logits_fn(model, variables, "train")

