"""The training loop: owns I/O, checkpoints, logging and preemption.

`train_and_evaluate(config, workdir)` is what `train.py` calls. The arithmetic
lives in the jit-compiled step of `steps.py`; this loop only feeds it batches,
writes metrics, saves checkpoints and, at the end, evaluates on the held-out
split and writes `summary.json`.

Run directory layout:
  config.json       the config of the run (written once, checked on resume)
  checkpoints/      orbax checkpoints, the latest few
  metrics.jsonl     one JSON record per logged step
  tensorboard/      event files with the same scalars
  summary.json      final metrics, config, wall time and device count

A run is safe to kill at any point: restarting it with the same workdir
resumes from the latest checkpoint and reproduces the uninterrupted run
bitwise. SIGTERM (cloud TPU preemption) saves a checkpoint and exits cleanly.
Everything that can be wrong with the input is checked before anything in
the workdir is written.
"""

import functools
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from advjax import attacks, checkpointing, config as config_lib, data, evaluation, models, parallel
from advjax.errors import CheckpointError, ConfigError
from advjax.training import advprop, metrics_io, objectives, optim, steps
from advjax.training.train_state import AUX_BATCH_STATS, TrainState, create_train_state

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
# Fields that may change when a run is resumed (its length and cadences).
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "eval", "distributed")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Checks the workdir is writable and, if it holds a run, that it is this run.

  Raises:
    ConfigError: the workdir cannot be created or written.
    CheckpointError: the workdir holds a run with a different config.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be created: {e.strerror}") from e
  if not os.path.isdir(workdir) or not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not a writable directory")
  saved_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      saved = _flatten(json.load(f))
    current = _flatten(config_lib.to_dict(config))
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES)
    if changed:
      raise CheckpointError(
          f"workdir {workdir!r} holds a run with a different config ({', '.join(changed)}); "
          "use a new workdir")


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del signum, frame
      self.requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def variables_of(state: TrainState) -> dict[str, Any]:
  """The model variables held by a train state, auxiliary BatchNorm sets (AdvProp) included."""
  return {"params": state.params, "batch_stats": state.batch_stats,
          **state.extras.get(AUX_BATCH_STATS, {})}


class Experiment:
  """Everything built from a config before training starts: data, model, optimiser, mesh."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = parallel.make_mesh(devices)
    config_lib.validate(config, num_devices=self.mesh.size)
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    self.train_source = data.make_train_source(
        config.data, global_batch_size=config.batch_size, seed=config.seed,
        process_index=self.process_index, process_count=self.process_count,
        augmented_view=config.objective == "advprop" and bool(config.advprop.aug_bn))
    self.info = self.train_source.info
    self.model = models.create_model(
        config.model.name, num_classes=self.info.num_classes, activation=config.model.activation,
        norm=config.model.norm, mean=self.info.mean, std=self.info.std, dtype=config.model.dtype)
    self.steps_per_epoch = self.train_source.steps_per_epoch
    self.total_steps = config_lib.resolve_steps(config, self.steps_per_epoch)
    self.tx, self.schedule = optim.make_optimizer(config, self.steps_per_epoch, self.total_steps)
    # The BN set evaluation normalises with (AdvProp's main or auxiliary BNs, Xie thesis table 7.3).
    self.eval_model = models.aux_bn.with_bn_set(self.model, config.advprop.eval_bn)
    # One builder per experiment: evaluators jit over it (static) and take the variables traced.
    self.logits_fn_builder = functools.partial(attacks.make_logits_fn, self.eval_model)

  def init_state(self) -> TrainState:
    """A fresh state, replicated over the mesh."""
    rng = jax.random.PRNGKey(self.config.seed)
    image_shape = tuple(self.info.image_shape)

    def init(rng):
      extras = objectives.init_extras(self.config, image_shape)
      return create_train_state(self.model, self.tx, rng, image_shape, extras,
                                aux_bn_sets=advprop.bn_sets(self.config))

    return jax.jit(init, out_shardings=parallel.replicated(self.mesh))(rng)

  def eval_batches(self, split: str | None = None):
    """The held-out split (its first `eval.num_examples`) as global sharded batches with a padding mask."""
    limit = self.config.eval.num_examples
    global_size = self.config.eval.batch_size
    local_size = global_size // self.process_count
    for i, batch in enumerate(data.make_eval_batches(
        self.config.data, split or self.config.eval.split, batch_size=global_size,
        process_index=self.process_index, process_count=self.process_count)):
      if limit:
        if i * global_size >= limit:
          return
        # Global index of each local row: this process holds rows [p*L, (p+1)*L) of batch i.
        index = i * global_size + self.process_index * local_size + np.arange(local_size)
        batch = dict(batch, mask=batch["mask"] * (index < limit))
      yield parallel.shard_batch(batch, self.mesh)

  def evaluate_clean(self, state: TrainState) -> dict[str, float]:
    """Accuracy on the held-out split."""
    result = evaluation.clean_accuracy(self.logits_fn_builder, self.eval_batches(), variables=variables_of(state))
    return {"test_accuracy": result["accuracy"]}

  def restore_latest(self, workdir: str, template: TrainState) -> TrainState:
    """The latest checkpoint of a run directory, restored into `template`'s structure."""
    return _existing_checkpointer(workdir).restore(template)

  def restore_model(self, workdir: str) -> tuple[int, dict[str, Any]]:
    """The step and model variables of a run's latest checkpoint, whatever its objective and optimiser.

    Evaluation needs only these, so one config's evaluation can be applied
    to runs trained with other objectives (ERM, PGD-AT, UAT) of the same model.
    """
    state = self.init_state()
    template = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats}
    if AUX_BATCH_STATS in state.extras:
      template["extras"] = {AUX_BATCH_STATS: state.extras[AUX_BATCH_STATS]}
    loaded = _existing_checkpointer(workdir).restore_subset(template)
    variables = {"params": loaded["params"], "batch_stats": loaded["batch_stats"],
                 **loaded.get("extras", {}).get(AUX_BATCH_STATS, {})}
    return int(loaded["step"]), variables

  def init_from(self, workdir: str, state: TrainState) -> TrainState:
    """`state` with the model variables of another run's latest checkpoint (fine-tuning).

    Only the plain model is loaded; auxiliary BatchNorm sets (AdvProp) that
    the other run may not have keep their initial scale, offset and statistics.
    """
    main = models.aux_bn.export_main(variables_of(state))
    loaded = _existing_checkpointer(workdir).restore_subset(
        {"params": main["params"], "batch_stats": main["batch_stats"]})
    params = traverse_util.flatten_dict(state.params)
    params.update(traverse_util.flatten_dict(loaded["params"]))
    return state.replace(params=traverse_util.unflatten_dict(params), batch_stats=loaded["batch_stats"])


def _existing_checkpointer(workdir: str) -> checkpointing.Checkpointer:
  if not os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR)):
    raise CheckpointError(f"no checkpoints in {workdir!r}")
  return checkpointing.Checkpointer(workdir, create=False)


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict[str, Any]:
  """Trains (or resumes) the run of `config` in `workdir`, then evaluates it.

  Args:
    config: the experiment config.
    workdir: the run directory (created if missing; resumed if it holds a run).
    devices: the devices to run on; all global devices by default.

  Returns:
    The summary also written to `<workdir>/summary.json`; if the run was
    preempted by SIGTERM, a dict with `preempted_at_step` and no summary file.
  """
  t_start = time.time()
  parallel.initialize_distributed(**config.distributed)
  experiment = Experiment(config, devices)
  prepare_workdir(workdir, config)
  state = experiment.init_state()
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state = checkpointer.restore(state, start_step)
  elif config.init_checkpoint:
    state = experiment.init_from(config.init_checkpoint, state)
  is_chief = jax.process_index() == 0
  if is_chief and not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      json.dump(config_lib.to_dict(config), f, indent=2)
  metrics_io.truncate_after(workdir, start_step)

  mesh, total = experiment.mesh, experiment.total_steps
  train_step = steps.compile_train_step(
      steps.make_train_step(experiment.model, config, experiment.schedule), state, mesh)
  writer = metrics_io.MetricWriter(workdir)
  progress = metrics_io.Progress(start_step, total)
  history, last = [], {}
  if is_chief:
    print(f"training {config.model.name} on {config.data.name}: steps {start_step}->{total} "
          f"on {mesh.size} device(s), {jax.process_count()} process(es)", file=sys.stderr, flush=True)
  with _Preemption() as preemption:
    step = start_step
    while step < total:
      batch = parallel.shard_batch(experiment.train_source.batch(step), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      history.append(metrics)
      if step % config.log_every_steps == 0 or step == total:
        last = _mean_metrics(history)
        history = []
        writer.write(step, last)
        progress.report(step, last)
      if step % config.checkpoint_every_steps == 0 and step < total:
        checkpointer.save(step, state)
      if preemption.requested:
        checkpointer.save(step, state, wait=True)
        checkpointer.close()
        writer.close()
        if is_chief:
          print(f"SIGTERM: saved checkpoint at step {step}; rerun with the same workdir to resume",
                file=sys.stderr, flush=True)
        return {"preempted_at_step": step}
  if checkpointer.latest_step() != total:
    checkpointer.save(total, state)
  checkpointer.close()

  results = experiment.evaluate_clean(state)
  writer.write(total, results)
  writer.close()
  summary = {
      "final_train_metrics": last, **results, "steps": total, "wall_time_s": time.time() - t_start,
      "device_count": jax.device_count(), "process_count": jax.process_count(),
      "config": config_lib.to_dict(config),
  }
  if is_chief:
    with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2)
    print(f"test accuracy {results['test_accuracy']:.4f}; summary in {os.path.join(workdir, SUMMARY_FILE)}",
          file=sys.stderr, flush=True)
  return summary
