"""AdvProp (Xie thesis ch. 7, algorithm 2) and the mixture-BN knobs of ch. 6, end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import run_dir, runs, tasks
from advjax import config as config_lib
from advjax.errors import ConfigError
from advjax.experiment import Experiment
from advjax.models import aux_bn, create_model
from advjax.training import objectives
from advjax.training.objectives import advprop
from configs import tiny


def _restore(workdir, config):
  experiment = Experiment(config, jax.devices()[:1])
  return run_dir.Checkpointer(workdir, create=False).restore(experiment.init_state())[1]


def _loss_fn(model, config, num_classes=10):
  """The objective's loss for `config` on `model` (no data needed)."""
  return objectives.build(config, model=model, task=tasks.Classification(num_classes), schedule=lambda step: 0.01,
                          total_steps=10, steps_per_epoch=10).loss


def test_attackers_of_section_7_5_1():
  assert advprop.advprop_attack(1).num_steps == 1
  cfg = advprop.advprop_attack(4)
  assert (cfg.num_steps, cfg.step_size, cfg.eps, cfg.init) == (5, 1.0, 4.0, "uniform")
  assert advprop.advprop_attack(3, "ifgsm").init == "zero"
  with pytest.raises(ConfigError):
    advprop.advprop_attack(2, "fgsm")


def test_gd_attacker_leaves_the_ball_and_pgd_does_not():
  w = jax.random.normal(jax.random.key(0, impl="rbg"), (48, 3))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
  x = jax.random.uniform(jax.random.key(1, impl="rbg"), (4, 4, 4, 3), minval=0.3, maxval=0.7)
  y = jnp.array([0, 1, 2, 0])
  cfg = advprop.advprop_attack(2).__class__(eps=2.0, step_size=1.0, num_steps=6, init="uniform")
  eps = 2.0 / 255
  x_gd = advprop.unprojected_attack(logits_fn, x, y, jax.random.key(2, impl="rbg"), cfg)
  assert float(jnp.max(jnp.abs(x_gd - x))) > eps * 1.5
  assert float(jnp.min(x_gd)) >= 0 and float(jnp.max(x_gd)) <= 1
  from advjax.attacks import pgd
  x_pgd = pgd.attack(logits_fn, x, y, jax.random.key(2, impl="rbg"), cfg)
  assert float(jnp.max(jnp.abs(x_pgd - x))) <= eps + 1e-6


def _config(**advprop_fields):
  c = tiny.get_config()
  c.objective = "advprop"
  c.num_steps = 3
  c.batch_size = 16
  c.checkpoint_every_steps = 10
  c.eval.num_examples = 200
  advprop.configure_attacker(c, eps=2)
  for k, v in advprop_fields.items():
    c.advprop[k] = v
  return c


def _moved_from(tree, value):
  """Whether some leaf of `tree` differs from the constant `value` it was initialised to."""
  return any(not np.all(np.asarray(leaf) == value) for leaf in jax.tree.leaves(tree))


def test_advprop_trains_end_to_end_and_checkpoints_the_aux_set(tmp_path):
  config = _config()
  summary = runs.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  assert np.isfinite(summary["final_train_metrics"]["loss"])
  assert {"adv_accuracy", "accuracy"} <= set(summary["final_train_metrics"])
  restored = _restore(str(tmp_path), config)
  aux = restored.model_state["batch_stats_adv"]
  main = restored.model_state["batch_stats"]
  # Both sets moved away from their initial running variance of 1, each on its own data.
  var = lambda tree: [leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree) if p[-1].key == "var"]  # noqa: E731
  assert _moved_from(var(aux), 1.0) and _moved_from(var(main), 1.0)
  assert not np.array_equal(var(aux)[0], var(main)[0])
  assert "scale_adv" in restored.params["bn1"]
  # The exported model is the plain architecture.
  exported = aux_bn.export_main(restored.variables)
  assert set(exported) == {"params", "batch_stats"} and "scale_adv" not in exported["params"]["bn1"]


def test_fine_grained_advprop_trains_a_set_on_the_augmented_view(tmp_path):
  config = _config(aug_bn="aug")
  config.data.augment = True
  runs.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  experiment = Experiment(config, jax.devices()[:1])
  batch = experiment.train_source.batch(0)
  # 'image' is the un-augmented view: the batch of the same run without augmentation.
  plain = Experiment(_config(), jax.devices()[:1]).train_source.batch(0)
  np.testing.assert_array_equal(batch["image"], plain["image"])
  assert batch["image_aug"].shape == batch["image"].shape
  assert not np.array_equal(batch["image_aug"], batch["image"])
  stats = _restore(str(tmp_path), config).model_state
  assert set(stats) == {"batch_stats", "batch_stats_adv", "batch_stats_aug"}
  var = lambda tree: [leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree) if p[-1].key == "var"]  # noqa: E731
  assert _moved_from(var(stats["batch_stats_aug"]), 1.0)
  assert not np.array_equal(var(stats["batch_stats_aug"])[0], var(stats["batch_stats_adv"])[0])


def test_mixture_bn_alp_and_running_statistics_phase():
  # 100% adv + 50% clean through the main BNs, with logit pairing.
  config = _config(adv_bn="main", clean_ratio=0.5, logit_pairing=0.5, eval_bn="main")
  assert config_lib.validate(config).blocks["advprop"].bn_sets() == ()
  model = create_model("convnet_tiny", num_classes=10)
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), (8, 8, 8, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape) + 1.0, jnp.float32), shapes)
  batch = {"image": x, "label": jnp.arange(8) % 10}
  stats = {"batch_stats": variables["batch_stats"]}
  run = jax.jit(_loss_fn(model, config), static_argnames="use_batch_stats")
  key = jax.random.key(0, impl="rbg")
  loss, (new, metrics) = run(variables["params"], stats, batch, key, use_batch_stats=True)
  assert np.isfinite(float(loss)) and float(metrics["logit_pairing"]) > 0
  assert not np.array_equal(jax.tree.leaves(new)[0], jax.tree.leaves(stats)[0])
  # Table 6.2's phase: running statistics are used and left unchanged.
  _, (frozen, _) = run(variables["params"], stats, batch, key, use_batch_stats=False)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(stats)))


@pytest.mark.parametrize("bn_mode, depends", [("batch", False), ("eval", True)])
def test_attack_bn_mode_selects_the_aux_sets_statistics(bn_mode, depends):
  # With batch statistics everywhere the loss cannot see the aux set's running statistics;
  # with bn_mode 'eval' the attack normalises with them, so the examples (and loss) move.
  config = _config()
  config.advprop.bn_mode = bn_mode
  model = create_model("convnet_tiny", num_classes=10, norm="batchnorm")
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), (8, 8, 8, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape) + 1.0, jnp.float32), shapes)
  variables = aux_bn.add_aux_sets(model, variables, ["adv"], x)
  params = variables.pop("params")
  batch = {"image": x, "label": jnp.arange(8) % 10}
  run = jax.jit(_loss_fn(model, config))
  key = jax.random.key(1, impl="rbg")
  loss, _ = run(params, variables, batch, key)
  shifted = dict(variables)
  shifted["batch_stats_adv"] = jax.tree.map(lambda v: v + 0.5, variables["batch_stats_adv"])
  loss_shifted, _ = run(params, shifted, batch, key)
  assert (float(loss) != float(loss_shifted)) == depends


def test_config_checks():
  config = _config(eval_bn="aug")
  with pytest.raises(ConfigError, match="advprop.eval_bn"):
    config_lib.validate(config)
  config = _config(aug_bn="aug")
  with pytest.raises(ConfigError, match="data.augment must be True"):
    config_lib.validate(config)
  config = _config(logit_pairing=1.0, clean_ratio=0.0)
  with pytest.raises(ConfigError, match="advprop.logit_pairing"):
    config_lib.validate(config)
  config = _config()
  config.model.activation = "silu"
  config.advprop.sat.softplus_grad = "both"
  with pytest.raises(ConfigError, match="advprop.sat.softplus_grad"):
    config_lib.validate(config)


def test_softplus_grad_for_weights_changes_gradients_not_the_loss():
  # Table 5.1's "weights" row through the pgd_at objective: same forward pass, smoother backward.
  config = config_lib.base_config()
  config.objective = "pgd_at"
  config.adversarial.attack.num_steps = 1
  model = create_model("convnet_tiny", num_classes=10, norm="none")
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), (4, 8, 8, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), jnp.float32), shapes["params"])
  batch = {"image": x, "label": jnp.arange(4)}
  results = {}
  for mode in ("", "weights"):
    config.adversarial.sat.softplus_grad = mode
    loss_fn = _loss_fn(model, config)
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {}, batch, jax.random.key(1, impl="rbg"))
    results[mode] = (loss, grads)
  np.testing.assert_allclose(results[""][0], results["weights"][0], rtol=1e-6)
  g0, g1 = (jax.tree.leaves(results[m][1]) for m in ("", "weights"))
  assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))
