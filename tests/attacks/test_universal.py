"""Universal perturbations: the ball, strength, streaming, appendix D, and their evaluation and eps_uni search."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax.attacks import losses, universal
from advjax.errors import ConfigError, DataError
from advjax.evaluation import universal_robustness as evaluation
from tests.attacks import tiny_models

KEY = jax.random.key(3)
SHAPE = (8, 8, 1)


def _train_batches(n=4, size=32):
  """n unpadded batches of training digits, as the adversary's data stream."""
  x, y, _, _ = tiny_models.digits()
  return [{"image": jnp.asarray(x[i * size:(i + 1) * size]),
           "label": jnp.asarray(y[i * size:(i + 1) * size]), "mask": jnp.ones(size)}
          for i in range(n)]


def _held_out(batch):
  x, y = batch
  return [{"image": x, "label": y, "mask": jnp.ones(x.shape[0])}]


def _mean_ce(logits_fn, x, y, xi):
  return float(jnp.mean(losses.cross_entropy(logits_fn(jnp.clip(x + xi, 0, 1)), y)))


@pytest.mark.parametrize("cfg", [
    universal.uat_config(eps=48.0, step_size=8.0, num_steps=8),
    universal.shared_at_eval_config(eps=48.0, num_steps=8),
    universal.uat_config(eps=48.0, step_rule="adam", step_size=8.0, num_steps=8),
    universal.UniversalConfig(norm="l2", eps=400.0, step_rule="sgd_momentum", step_size=4000.0,
                              num_steps=8, loss="cross_entropy"),
], ids=lambda c: f"{c.norm}-{c.step_rule}-{c.step_schedule}")
def test_stays_in_ball_and_weakens_the_model(cfg, logits_fn, batch):
  x, y = batch
  xi = universal.universal_perturbation(logits_fn, _train_batches(), KEY, cfg, SHAPE)
  eps = cfg.eps / 255
  norm = float(jnp.abs(xi).max() if cfg.norm == "linf" else jnp.linalg.norm(xi))
  assert eps * 0.5 < norm <= eps * (1 + 1e-5)
  # Generalises from the training stream to held-out examples.
  assert _mean_ce(logits_fn, x, y, xi) > 2 * _mean_ce(logits_fn, x, y, 0.0)
  metrics = evaluation.evaluate_universal(logits_fn, _held_out(batch), xi)
  assert metrics["clean"]["accuracy"] == 1.0 and metrics["adversarial"]["accuracy"] < 0.9
  # Every example starts correct, so the fooled ones are exactly the misclassified ones.
  assert metrics["fooling_ratio"] == pytest.approx(1.0 - metrics["adversarial"]["accuracy"])


def test_streams_a_generator_with_one_compile(logits_fn, batch):

  @chex.assert_max_traces(n=1)  # One trace of the update for all of its steps, whatever the radius.
  def counting_logits_fn(x):
    return logits_fn(x)

  cfg = universal.uat_config(eps=32.0, step_size=4.0, num_steps=6)

  def generator():
    for b in _train_batches(6):
      yield b

  universal.universal_perturbation(counting_logits_fn, generator(), KEY, cfg, SHAPE)
  # Other radii reuse the compilation (eps is traced); a list is cycled as needed.
  xi = universal.universal_perturbation(counting_logits_fn, _train_batches(2), KEY, cfg, SHAPE,
                                        eps=16.0)
  assert float(jnp.abs(xi).max()) <= 16 / 255 + 1e-7
  with pytest.raises(DataError, match="ran out after 6"):
    universal.universal_perturbation(
        logits_fn, iter(_train_batches(6)), KEY,
        universal.uat_config(eps=32.0, step_size=4.0, num_steps=7), SHAPE)


def test_appendix_d_averages_sign_gradients(logits_fn):
  cfg = universal.appendix_d_config(eps=20.0, step_size=6.0, grad_batches=2, num_steps=2)
  batches = _train_batches(4)
  xi = universal.universal_perturbation(logits_fn, batches, KEY, cfg, SHAPE)

  def mean_grad(xi, b):
    def loss(v):
      return jnp.mean(losses.cross_entropy(logits_fn(jnp.clip(b["image"] + v, 0, 1)),
                                           b["label"]))
    return jax.grad(loss)(xi)

  expected, disagreements = jnp.zeros(SHAPE), 0
  for k in range(2):
    pair = batches[2 * k:2 * k + 2]
    signs = [jnp.sign(mean_grad(expected, b)) for b in pair]
    disagreements += int(jnp.sum(signs[0] != signs[1]))
    expected = jnp.clip(expected + 6.0 / 255 * (signs[0] + signs[1]) / 2, -20 / 255, 20 / 255)
  # Where the batches disagree, the mean of signs differs from the sign of the
  # mean gradient and from either batch's sign, so the comparison can tell them apart.
  assert disagreements > 0
  np.testing.assert_allclose(np.asarray(xi), np.asarray(expected), atol=1e-6)


def test_evaluation_respects_masks_and_targets(logits_fn, batch):
  x, y = batch
  xi = universal.universal_perturbation(
      logits_fn, _train_batches(), KEY, universal.uat_config(eps=48.0, step_size=8.0,
                                                             num_steps=6), SHAPE)
  mask = jnp.where(jnp.arange(32) < 20, 1.0, 0.0)
  garbage = jnp.where(mask > 0, y, (y + 1) % 10)
  padded = evaluation.evaluate_universal(logits_fn, [{"image": x, "label": garbage, "mask": mask}], xi)
  real = evaluation.evaluate_universal(logits_fn, [{"image": x[:20], "label": y[:20], "mask": jnp.ones(20)}], xi)
  assert padded == real and real["adversarial"]["num_examples"] == 20
  fooled = np.mean(np.asarray(jnp.argmax(logits_fn(jnp.clip(x[:20] + xi, 0, 1)), -1)
                              != jnp.argmax(logits_fn(x[:20]), -1)))
  assert real["fooling_ratio"] == pytest.approx(fooled)

  cfg = universal.UniversalConfig(eps=64.0, step_size=8.0, num_steps=10, targeted=True,
                                  target_class=3, loss="cross_entropy")
  xi = universal.universal_perturbation(logits_fn, _train_batches(), KEY, cfg, SHAPE)
  hit = evaluation.evaluate_universal(logits_fn, _held_out(batch), xi, target=3)
  clean = evaluation.evaluate_universal(logits_fn, _held_out(batch), 0 * xi, target=3)
  assert hit["target"]["accuracy"] > clean["target"]["accuracy"] + 0.3


def test_eps_uni_search_brackets_delta(logits_fn, batch):
  cfg = universal.shared_at_eval_config(num_steps=8)
  result = evaluation.eps_uni_search(logits_fn, _train_batches(), _held_out(batch), KEY, cfg,
                                     target_rate=0.5, num_steps=6)
  xi = result.artifact
  assert result.found and result.clean_rate == 0.0
  assert result.lower_bound < result.eps < 255.0
  assert result.rate >= 0.5 > result.rate_at_lower_bound
  assert float(np.abs(xi).max()) <= result.eps / 255 + 1e-6

  def rate(eps):
    xi = universal.universal_perturbation(logits_fn, _train_batches(), KEY, cfg, SHAPE, eps=eps)
    return 1.0 - evaluation.evaluate_universal(logits_fn, _held_out(batch), xi)["adversarial"]["accuracy"]

  assert rate(result.eps) >= 0.5 > rate(result.lower_bound)
  assert 1.0 - evaluation.evaluate_universal(logits_fn, _held_out(batch), jnp.asarray(xi))[
      "adversarial"]["accuracy"] == result.rate


def test_config_validation():
  cfg = universal.UniversalConfig.from_config(ml_collections.ConfigDict(
      {"eps": 8, "grad_batches": 10, "step_rule": "adam"}))
  assert cfg.eps == 8.0 and cfg.grad_batches == 10
  for bad, field in [({"norm": "l2"}, "step_rule"),
                     ({"target_class": -2}, "target_class"),
                     ({"grad_batches": 0}, "grad_batches"),
                     ({"targeted": True, "target_class": 1}, "targeted")]:
    with pytest.raises(ConfigError, match=field):
      universal.UniversalConfig(**bad)
  with pytest.raises(ConfigError, match="unknown field"):
    universal.UniversalConfig.from_config({"epsilon": 8})


def test_a_targeted_attack_needs_a_target(logits_fn, batch):
  cfg = universal.UniversalConfig(eps=8.0, num_steps=1, targeted=True, loss="cross_entropy")
  with pytest.raises(ConfigError, match="target"):
    universal.universal_perturbation(logits_fn, _train_batches(1), KEY, cfg, SHAPE)
