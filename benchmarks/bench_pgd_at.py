"""One PGD-k adversarial-training step (Madry et al.), JAX vs PyTorch on identical weights.

The step: attack the current model in eval mode with PGD-k (L-inf, eps 8/255,
step 2/255, from the clean image so both sides start identically), then one
training-mode forward/backward on the adversarial batch and an SGD-momentum
update (lr 0.1, momentum 0.9, no weight decay; optax's and PyTorch's SGD
agree exactly on this). The JAX side is the library's own step,
`advjax.training.steps.make_train_step` with objective 'pgd_at', compiled by
`compile_train_step` (jit, state donated): attack, update and all, one program.

Checked: after one step from the same state the parameter updates and the
BatchNorm running statistics of both sides agree.

Run: `python -m benchmarks.bench_pgd_at [--models resnet20 --steps 7]`.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from advjax import config as config_lib
from advjax import parallel, tasks
from advjax.attacks import threat
from advjax.training import objectives
from advjax.training import steps as steps_lib
from advjax.training.train_state import TrainState
from benchmarks import bench_fwd_bwd, bench_pgd, harness

LEARNING_RATE, MOMENTUM = 0.1, 0.9


def train_config(spec: harness.Spec, objective: str):
  """The experiment config of a benchmark step: SGD-momentum, constant rate, PGD-k from zero."""
  c = config_lib.base_config()
  c.model.name = spec.model
  c.model.dtype = spec.dtype
  c.objective = objective
  c.batch_size = spec.batch
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = LEARNING_RATE
  c.optimizer.momentum = MOMENTUM
  for block in (c.adversarial, c.advprop):  # The attack of whichever objective the row trains.
    block.attack.eps = bench_pgd.EPS
    block.attack.step_size = bench_pgd.STEP_SIZE
    block.attack.num_steps = spec.steps
    block.attack.init = "zero"
  return c


def jax_train_step(m: harness.Matched, spec: harness.Spec, objective: str, configure=None, variables=None,
                   task=None):
  """The library's compiled step and a function making fresh states from the matched weights.

  Args:
    m: the matched models.
    spec: the benchmark spec.
    objective: the `advjax.training.objectives.OBJECTIVES` name.
    configure: optional in-place edit of the experiment config (`train_config`).
    variables: the starting variables if not `m.variables` (e.g. with auxiliary BN sets).
    task: the `advjax.tasks` task scoring the labels; default classification.

  Returns:
    (compiled step, fresh_state(), mesh, the objective).
  """
  config = train_config(spec, objective)
  if configure:
    configure(config)
  config_lib.validate(config, num_devices=1)
  variables = m.variables if variables is None else variables
  schedule = optax.constant_schedule(LEARNING_RATE)
  tx = optax.sgd(schedule, momentum=MOMENTUM)
  mesh = parallel.make_mesh(jax.devices()[:1])
  size, channels, classes = spec.shape
  built = objectives.build(config, model=m.model, task=task or tasks.Classification(classes), schedule=schedule,
                           total_steps=1, steps_per_epoch=1)

  def fresh_state():
    # Copies, because every call of the compiled step donates (frees) its input state.
    copied = jax.tree.map(jnp.copy, variables)
    return TrainState.create(apply_fn=m.model.apply, params=copied["params"], tx=tx,
                             model_state={k: v for k, v in copied.items() if k != "params"},
                             rng=jax.random.key(0), extras=built.init_extras((size, size, channels)))

  return steps_lib.compile_train_step(built.train_step, fresh_state(), mesh), fresh_state, mesh, built


def torch_pgd_at_step(tm, opt, x, y, *, steps: int, dtype: str) -> None:
  """Attack in eval mode, then one SGD step on the adversarial batch in training mode."""
  tm.eval()
  x_adv = bench_pgd.torch_pgd(tm, x, y, eps=threat.to_unit(bench_pgd.EPS),
                              alpha=threat.to_unit(bench_pgd.STEP_SIZE), steps=steps, dtype=dtype)
  tm.train()
  opt.zero_grad(set_to_none=True)
  with harness.autocast(dtype):
    loss = F.cross_entropy(harness.loss_logits(tm(x_adv)), y)
  loss.backward()
  opt.step()


def make_optimizer(tm):
  return torch.optim.SGD(tm.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)


def check_update(spec, before, jax_state, torch_model, tol, reference_model, as_torch=None) -> dict[str, float]:
  """Parameter updates (new - old) and running statistics agree after one step.

  `reference_model` took the same step in float64 (see
  `harness.assert_trees_close_or_as_accurate`); `as_torch` maps the JAX
  variables to the twin's state-dict keys (default `harness.flax_as_torch`).
  """
  after_jax = (as_torch or (lambda v: harness.flax_as_torch(v, spec.model)))(jax_state.variables)
  after_torch = harness.torch_params(torch_model)
  after_ref = {k: v.astype(np.float64) for k, v in
               ((k, v.detach().cpu().numpy()) for k, v in reference_model.state_dict().items())}
  update_jax = {k: after_jax[k] - before[k] for k in before}
  update_torch = {k: after_torch[k] - before[k] for k in before}
  params = {k for k in before if not k.endswith(("running_mean", "running_var"))}
  stats = set(before) - params
  return {
      "param update": harness.assert_trees_close_or_as_accurate(
          "param update", update_jax, {k: update_torch[k] for k in params},
          {k: after_ref[k] - before[k] for k in params}, tol),
      "running stats": harness.assert_trees_close(
          "running stats", after_jax, {k: after_torch[k] for k in stats}, tol),
  }


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  step, fresh_state, _, _ = jax_train_step(m, spec, "pgd_at")
  notes = ["attack from the clean image (init='zero') so both sides start identically"]
  # Updates are differences of close numbers and inherit the attack's sign flips.
  tol = 10 * harness.TOLERANCE[spec.dtype]

  def check():
    before = harness.torch_params(m.torch_model)
    state, _ = step(fresh_state(), batch)
    tm = copy.deepcopy(m.torch_model)
    xt, yt = harness.to_torch(x, y)
    torch_pgd_at_step(tm, make_optimizer(tm), xt, yt, steps=spec.steps, dtype=spec.dtype)
    ref = harness.float64_twin(m.torch_model)
    torch_pgd_at_step(ref, make_optimizer(ref), xt.double(), yt, steps=spec.steps, dtype="float32")
    return check_update(spec, before, state, tm, tol, ref)

  def torch_run(tm, xt, yt, channels_last):
    opt = make_optimizer(tm)
    return lambda: torch_pgd_at_step(tm, opt, xt, yt, steps=spec.steps, dtype=spec.dtype)

  timers = train_step_timers(step, fresh_state, batch, m, spec, x, y, notes, torch_run)
  return harness.Workload(f"pgd{spec.steps}_at", spec, check, timers, lambda: step_flops(m, spec, batch), notes)


def train_step_timers(step, fresh_state, batch: dict, m: harness.Matched, spec: harness.Spec,
                      x: np.ndarray, y: np.ndarray, notes: list[str], torch_run) -> dict:
  """Timers of a training step: 'jax' (the compiled step, its state carried from call to call)
  and one per PyTorch variant of `harness.torch_variants`.

  `torch_run(tm, xt, yt, channels_last)` builds that variant's per-step state
  (optimiser, ...) and returns a zero-argument callable taking one step.
  """
  box = {"state": fresh_state()}

  def run_jax():
    box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready(metrics)

  timers = {"jax": run_jax}
  for name, (tm, channels_last) in harness.torch_variants(m.torch_model, spec, notes).items():
    xt, yt = harness.to_torch(x, y, channels_last)
    one_step = torch_run(tm, xt, yt, channels_last)

    def run(one_step=one_step):
      one_step()
      harness.torch_sync()

    timers[name] = run
  return timers


def step_flops(m: harness.Matched, spec: harness.Spec, batch: dict, training_passes: int = 1) -> float:
  """FLOPs of an adversarial-training step: k attack steps and `training_passes` forward/backward passes."""
  attack = spec.steps * bench_pgd.input_grad_flops(m.model, m.variables, batch["image"], batch["label"])
  train = harness.step_flops(bench_fwd_bwd.jax_fwd_bwd(m.model), m.variables["params"],
                            m.variables["batch_stats"], batch["image"], batch["label"])
  return attack + training_passes * train


if __name__ == "__main__":
  harness.main(build, steps=None)
