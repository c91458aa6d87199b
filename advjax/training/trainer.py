"""The training loop: owns I/O, checkpoints, logging and preemption.

`train(experiment, workdir)` runs (or resumes) the training of an
`advjax.experiment.Experiment` in a run directory (`advjax.run_dir`). The
arithmetic lives in the objective's jit-compiled step; this loop only feeds
it batches (prefetched by the data pipeline), writes metrics, saves
checkpoints and stops cleanly on preemption.

A run is safe to kill at any point: restarting it with the same workdir
resumes from the latest checkpoint and reproduces the uninterrupted run
bitwise, because data order and per-step randomness are functions of the
step. SIGTERM (cloud TPU preemption) saves a checkpoint and returns: in a
single process at the next step boundary; across hosts at the same step on
every host, through JAX's preemption sync point (`jax.distributed`'s
coordination service catches the signal there). Everything that can be wrong
with the input is checked before anything in the workdir is written.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from advjax import checkpointing, parallel, run_dir
from advjax.errors import CheckpointError
from advjax.training import steps
from advjax.training.train_state import TrainState


class _Preemption:
  """Turns SIGTERM into a stop request that every process honours at the same step."""

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if self._multi:  # jax.distributed's preemption notifier owns SIGTERM.
      return self

    def handler(signum, frame):
      del signum, frame
      self._requested = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every host)."""
    if self._multi:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The preemption service is disabled.
        return False
    return self._requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    state: the train state at `step`.
    step: the last step trained.
    preempted: whether the run stopped early on a preemption notice.
    last_metrics: the mean training metrics of the last logging window.
    wall_time_s: seconds spent in `train`.
  """
  state: TrainState
  step: int
  preempted: bool
  last_metrics: dict[str, float]
  wall_time_s: float


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def train(experiment: Any, workdir: str) -> TrainResult:
  """Trains (or resumes) `experiment` in `workdir`.

  Args:
    experiment: an `advjax.experiment.Experiment`.
    workdir: the run directory (created if missing; resumed if it holds a run).

  Returns:
    A TrainResult; when preempted, the state saved at the step it stopped.
  """
  t_start = time.time()
  config = experiment.config
  resuming = checkpointing.latest_step(workdir) is not None
  if not resuming:
    for source in (config.init_checkpoint, config.model.backbone_checkpoint):
      if source and checkpointing.latest_step(source) is None:
        raise CheckpointError(f"no checkpoints in {source!r} (the run to start from)")
  run_dir.prepare(workdir, config.to_dict())
  state = experiment.init_state()
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state = checkpointer.restore(state, start_step)
  else:
    if config.model.backbone_checkpoint:
      state = experiment.init_backbone(config.model.backbone_checkpoint, state)
    if config.init_checkpoint:
      state = experiment.init_from(config.init_checkpoint, state)
  if not os.path.exists(os.path.join(workdir, run_dir.CONFIG_FILE)):
    run_dir.write_json(os.path.join(workdir, run_dir.CONFIG_FILE), config.to_dict())
  run_dir.truncate_after(workdir, start_step)

  mesh, total = experiment.mesh, experiment.total_steps
  train_step = steps.compile_train_step(experiment.objective.train_step, state, mesh)
  writer = run_dir.MetricWriter(workdir)
  progress = run_dir.Progress(start_step, total)
  history, last = [], {}
  if jax.process_index() == 0:
    print(f"training {config.model.name} on {config.data.name}: steps {start_step}->{total} "
          f"on {mesh.size} device(s), {jax.process_count()} process(es)", file=sys.stderr, flush=True)
  step, preempted = start_step, False
  with _Preemption() as preemption:
    for host_batch in experiment.train_source.iterate(start_step, total - start_step):
      state, metrics = train_step(state, parallel.shard_batch(host_batch, mesh))
      step += 1
      history.append(metrics)
      if step % config.log_every_steps == 0 or step == total:
        last = _mean_metrics(history)
        history = []
        writer.write(step, last)
        progress.report(step, last)
      if step < total and preemption.should_stop(step):
        preempted = True
        break
      if step % config.checkpoint_every_steps == 0 and step < total:
        checkpointer.save(step, state)
  if checkpointer.latest_step() != step:
    checkpointer.save(step, state)
  checkpointer.close()
  writer.close()
  if preempted and jax.process_index() == 0:
    print(f"SIGTERM: saved checkpoint at step {step}; rerun with the same workdir to resume",
          file=sys.stderr, flush=True)
  return TrainResult(state, step, preempted, last, time.time() - t_start)
