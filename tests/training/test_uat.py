"""Universal adversarial training (algorithms 3 and 4) on the embedded digits.

Runs the jitted steps on the 8-device mesh with the tiny convnet and checks
what would catch a wrong implementation: delta stays in the eps ball, is the
same array on every device, really raises the loss, is restored with its
Adam state by a resumed run, and algorithm 4 costs one backward pass where
algorithm 3 costs two.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from advjax import parallel, run_dir
from advjax import config as config_lib
from advjax.attacks import losses, threat
from advjax.errors import ConfigError
from advjax.experiment import Experiment
from advjax.training import objectives, optim, steps
from advjax.training.objectives import uat
from advjax.training.train_state import create_train_state
from configs import tiny, uat_cifar10_wrn, uat_digits, uat_imagenet

OBJECTIVES = ("uat_alternating", "uat_simultaneous")
EPS = 8.0


def _config(objective, rule="sign", **uat_fields):
  config = tiny.get_config()
  config.objective = objective
  config.uat.step_rule = rule
  config.uat.eps = EPS
  for k, v in uat_fields.items():
    config.uat[k] = v
  return config


@pytest.fixture(scope="module")
def experiment():
  """Data, model, optimiser and the 8-device mesh of the tiny run (the same for every objective)."""
  return Experiment(_config("uat_simultaneous"))


def _objective(experiment, config):
  """The objective of `config` on the experiment's model, task and schedule."""
  return objectives.build(config, model=experiment.model, task=experiment.task, schedule=experiment.schedule,
                          total_steps=experiment.total_steps, steps_per_epoch=experiment.steps_per_epoch)


@pytest.fixture(scope="module")
def initial_host_state(experiment):
  """`Experiment.init_state` once, on the host; each algorithm's state swaps in its own extras."""
  return jax.device_get(experiment.init_state())


def _fresh_state(experiment, host_state, config):
  """A replicated state with `config`'s initial extras.

  Built from host arrays so that fresh and restored states have the same
  (not weakly typed) avals and share one compiled step.
  """
  extras = jax.device_get(_objective(experiment, config).init_extras(tuple(experiment.info.image_shape)))
  return jax.device_put(host_state.replace(extras=extras), parallel.replicated(experiment.mesh))


def _batch(experiment, t):
  return parallel.shard_batch(experiment.train_source.batch(t), experiment.mesh)


@pytest.fixture(scope="module")
def runs(experiment, initial_host_state, tmp_path_factory):
  """Four jitted steps on 8 devices of each algorithm, with host copies and a checkpoint on the way.

  Returns:
    {objective: dict(config, step_fn, states (host copies after steps 0..4),
    history (metrics per step), workdir (checkpoint at step 2))}.
  """
  out = {}
  for objective, rule in (("uat_alternating", "sign"), ("uat_simultaneous", "adam")):
    config = _config(objective, rule, step_size=4.0, clip_beta=2.0)
    state = _fresh_state(experiment, initial_host_state, config)
    step_fn = steps.compile_train_step(_objective(experiment, config).train_step, state, experiment.mesh)
    workdir = str(tmp_path_factory.mktemp(objective))
    checkpointer = run_dir.Checkpointer(workdir)
    states, history = [jax.device_get(state)], []
    for t in range(4):
      state, metrics = step_fn(state, _batch(experiment, t))
      if t + 1 == 2:
        checkpointer.save(2, state, wait=True)
      # The step donates its input, so keep host copies for the checks.
      states.append(jax.device_get(state))
      history.append(jax.device_get(metrics))
    checkpointer.close()
    out[objective] = dict(config=config, step_fn=step_fn, states=states, history=history, workdir=workdir,
                          final=state)
  return out


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_delta_in_ball_and_identical_on_every_device(runs, objective):
  run = runs[objective]
  delta = run["final"].extras["delta"]
  assert delta.shape == (28, 28, 1) and delta.sharding.is_fully_replicated
  for leaf in jax.tree.leaves(run["final"].extras):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 8
    for shard in shards[1:]:
      np.testing.assert_array_equal(shard, shards[0])
  for host_state in run["states"][1:]:
    linf = np.max(np.abs(host_state.extras["delta"]))
    assert 0 < linf <= threat.to_unit(EPS) + 1e-7
  # delta_linf is logged in 0-255 units for the delta each step trained against: 0 at first.
  logged = [h["delta_linf"] for h in run["history"]]
  expected = [np.max(np.abs(s.extras["delta"])) / threat.to_unit(1.0) for s in run["states"][:-1]]
  np.testing.assert_allclose(logged, expected, rtol=1e-5)
  assert {"loss", "accuracy", "delta_loss", "delta_linf", "learning_rate"} <= set(run["history"][0])


def test_fgsm_step_lands_on_the_ball(runs):
  """delta += eps * sign(g) from delta = 0 puts every pixel with a gradient at +-eps."""
  delta = runs["uat_alternating"]["states"][1].extras["delta"]
  np.testing.assert_allclose(np.max(np.abs(delta)), threat.to_unit(EPS), rtol=1e-6)
  assert np.mean(np.isclose(np.abs(delta), threat.to_unit(EPS))) > 0.5


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_first_ascent_raises_the_loss(experiment, runs, objective):
  """The first delta raises the loss on its mini-batch at the weights it was computed for.

  Algorithm 3 ascends at the weights after the step's descent, algorithm 4 at
  those before it. Measured with batch statistics as in training, no dropout.
  """
  states = runs[objective]["states"]
  weights = states[1] if objective == "uat_alternating" else states[0]
  delta = states[1].extras["delta"]
  batch = experiment.train_source.batch(0)

  def loss_at(d):
    logits, _ = experiment.model.apply(weights.variables, threat.apply(batch["image"], d),
                                       train=False, use_batch_stats=True, mutable=["batch_stats"])
    return float(jnp.mean(losses.cross_entropy(logits, batch["label"])))

  assert loss_at(delta) > loss_at(np.zeros_like(delta)) + 1e-3


def test_checkpoint_restores_delta_and_adam_state_and_resumes_exactly(experiment, initial_host_state, runs):
  """orbax round trip of the whole state: delta and its Adam moments come back bitwise,
  and two more steps from the restored state reproduce the uninterrupted run."""
  run = runs["uat_simultaneous"]
  template = _fresh_state(experiment, initial_host_state, run["config"])
  assert set(template.extras) == {"delta", "delta_opt_state"}
  _, restored = run_dir.Checkpointer(run["workdir"], create=False).restore(template)
  assert restored.extras["delta"].sharding.is_fully_replicated
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.extras), run["states"][2].extras)
  assert np.max(np.abs(run["states"][2].extras["delta_opt_state"][0].nu)) > 0
  state = restored
  for t in (2, 3):
    state, _ = run["step_fn"](state, _batch(experiment, t))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.extras), run["states"][4].extras)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), run["states"][4].params)


@pytest.mark.parametrize("rule", ("sign", "sgd", "adam"))
def test_ascend_moves_with_the_gradient_and_projects(rule):
  """Every rule steps up the gradient, then clips to the eps ball (small case by hand)."""
  cfg = uat.UATConfig(step_rule=rule, eps=0.1 * 255, step_size=0.05 * 255, clip_beta=0.0)
  delta = jnp.array([[[0.0], [0.08]], [[-0.08], [0.0]]])
  extras = {"delta": delta, "delta_opt_state": cfg.rule().init(delta)}
  grad = jnp.array([[[2.0], [1.0]], [[-3.0], [-0.5]]])
  new = np.asarray(uat.ascend(extras, grad, cfg)["delta"])
  step = {"sign": 0.1 * np.sign(grad), "sgd": 0.05 * np.asarray(grad), "adam": 0.05 * np.sign(grad)}[rule]
  np.testing.assert_allclose(new, np.clip(np.asarray(delta) + step, -0.1, 0.1), rtol=1e-4, atol=1e-6)


def test_clipped_delta_objective_ignores_examples_past_beta():
  ce = jnp.array([0.5, 3.0, 1.0])
  np.testing.assert_allclose(uat.delta_objective(ce, 2.0), [0.5, 2.0, 1.0])
  np.testing.assert_allclose(uat.delta_objective(ce, 0.0), ce)
  grad = jax.grad(lambda c: jnp.sum(uat.delta_objective(c, 2.0)))(ce)
  np.testing.assert_allclose(grad, [1.0, 0.0, 1.0])


def _count(jaxpr, name: str) -> int:
  """Occurrences of primitive `name` in a jaxpr and every jaxpr nested in it."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          total += _count(sub.jaxpr, name)
        elif isinstance(sub, jax_core.Jaxpr):
          total += _count(sub, name)
  return total


def test_backward_passes_simultaneous_one_alternating_two(experiment):
  """Count convolutions in each step's program relative to natural training (ERM).

  With N convolutions in the forward pass, an ERM step has N forward, N
  weight-gradient and N - 1 input-gradient convolutions (the image needs
  no gradient). Algorithm 4 adds only the first layer's input gradient (one
  backward pass for both players); algorithm 3 adds a whole second forward
  and a second, input-only backward pass: 2N more.
  """
  image_shape = tuple(experiment.info.image_shape)
  # Shapes suffice to trace the programs; nothing is initialised or compiled.
  state = jax.eval_shape(lambda: create_train_state(
      experiment.model, experiment.tx, jax.random.PRNGKey(0), image_shape))
  batch = experiment.train_source.batch(0)
  forward = _count(jax.make_jaxpr(lambda v, x: experiment.model.apply(v, x))(
      state.variables, batch["image"]).jaxpr, "conv_general_dilated")
  assert forward == 6

  def convs(objective):
    built = _objective(experiment, _config(objective))
    extras = jax.eval_shape(lambda: built.init_extras(image_shape))
    return _count(jax.make_jaxpr(built.train_step)(state.replace(extras=extras), batch).jaxpr,
                  "conv_general_dilated")

  erm = convs("erm")
  assert erm == 3 * forward - 1
  assert convs("uat_simultaneous") == erm + 1
  assert convs("uat_alternating") == erm + 2 * forward


def test_bad_step_rule_is_one_config_error():
  config = _config("uat_simultaneous", "pgd")
  with pytest.raises(ConfigError, match=r"config\.uat: unknown ascent rule 'pgd'"):
    Experiment(config)
  config = _config("uat_simultaneous", "fgsm")  # The paper's name of the sign rule.
  with pytest.raises(ConfigError, match="'fgsm' is now called 'sign'"):
    Experiment(config)
  with pytest.raises(ConfigError, match="'delta_rule' is now 'step_rule'"):
    config_lib.parse({**config, "uat": {"delta_rule": "sign"}})


def test_paper_configs_validate_and_cifar_schedule_drops_at_40k_and_60k():
  for module in (uat_cifar10_wrn, uat_imagenet, uat_digits):
    config_lib.validate(module.get_config(), num_devices=8)
  config = uat_cifar10_wrn.get_config()
  assert (config.uat.eps, config.batch_size, config.num_steps) == (8.0, 128, 80_000)
  # The pipeline's epoch for CIFAR-10 at batch 128: 50,000 // 128 steps.
  schedule = optim.make_schedule(config.schedule, config.optimizer.learning_rate, 50_000 // 128, 80_000)
  np.testing.assert_allclose([schedule(s) for s in (0, 39_999, 40_000, 59_999, 60_000, 79_999)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  assert uat_imagenet.get_config().uat.eps == 10.0
