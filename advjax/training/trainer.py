"""The training loop: owns I/O, checkpoints, logging, preemption and the non-finite guard.

`train(experiment, workdir)` runs (or resumes) the training of an
`advjax.experiment.Experiment` in a run directory (`advjax.run_dir`). The
arithmetic lives in the objective's jit-compiled step; this loop only feeds
it batches (prefetched by the data pipeline), writes metrics, saves
checkpoints and stops cleanly.

What a run does when something goes wrong:

  SIGKILL        nothing to do: restarting with the same workdir resumes from
                 the latest checkpoint and reproduces the uninterrupted run
                 bitwise (data order and per-step randomness are functions of
                 the step); a metrics line cut short is dropped.
  SIGTERM        at any moment (`advjax.preemption`): a checkpoint of the
                 current step is saved (nothing, if training has not started)
                 and the loop returns; across hosts every host stops at the
                 same step.
  non-finite     a step whose loss, gradient norm or new state is not finite
                 stops the run with a `NonFiniteError` naming the step, before
                 it is logged or saved (`config.nonfinite='stop'`), or is
                 undone and skipped ('skip'); the checkpoints stay good.
  damaged checkpoint
                 it is set aside and the newest one that verifies is restored
                 (`advjax.run_dir.checkpoints`).
  failed write   room for a checkpoint is checked before training and at
                 every save; a save that fails anyway (a full disk,
                 permissions) is one `CheckpointError` naming its step,
                 within a step, its partial files removed; the previous
                 checkpoint is intact.

`config.json` is written only after the first step succeeded, so a run that
fails while starting (a bad seed, an image size that exhausts memory) leaves
a workdir that the corrected run can use. Resuming with fewer steps than the
latest checkpoint is one error that writes nothing; resuming a finished run
trains nothing.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import numpy as np

from advjax import parallel, preemption, run_dir
from advjax.errors import CheckpointError, NonFiniteError
from advjax.training import steps
from advjax.training.train_state import TrainState


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    state: the train state at `step` (None if stopped before it was built).
    step: the last step trained (or restored).
    preempted: whether the run stopped early on a preemption notice.
    last_metrics: the mean training metrics of the last logging window.
    wall_time_s: seconds spent in `train`.
  """
  state: TrainState | None
  step: int
  preempted: bool
  last_metrics: dict[str, float]
  wall_time_s: float


class Progress:
  """Prints a periodic line with steps/s and the remaining time (process 0)."""

  def __init__(self, start_step: int, total_steps: int):
    self._start_step = start_step
    self._total = total_steps
    self._t0 = time.perf_counter()

  def line(self, step: int, scalars: dict[str, float]) -> str:
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float("nan")
    shown = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())
    return f"step {step}/{self._total}  {shown}  {rate:.2f} steps/s  ETA {eta:.0f}s"

  def report(self, step: int, scalars: dict[str, float]) -> None:
    if jax.process_index() == 0:
      print(self.line(step, scalars), file=sys.stderr, flush=True)


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def _check_finite(step: int, metrics: dict, checkpointed: int | None, mode: str) -> None:
  """Raises NonFiniteError if the step's guard flag is down (mode 'stop').

  Args:
    step: the step just run.
    metrics: its metrics, with the guard's 'finite'.
    checkpointed: the newest checkpoint of the run, None if none was saved yet.
    mode: config.nonfinite.
  """
  if mode != "stop" or bool(jax.device_get(metrics["finite"])):
    return
  values = {k: float(v) for k, v in jax.device_get(metrics).items() if k in ("loss", "grad_norm")}
  shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items()) or "the new state"
  newest = "no checkpoint was saved yet" if checkpointed is None else f"the newest checkpoint is step {checkpointed}"
  raise NonFiniteError(
      f"training diverged at step {step} ({shown} not finite); nothing from that step was saved "
      f"({newest}); lower the learning rate, or set config.nonfinite='skip'")


def train(experiment: Any, workdir: str) -> TrainResult:
  """Trains (or resumes) `experiment` in `workdir`.

  Args:
    experiment: an `advjax.experiment.Experiment`.
    workdir: the run directory (created if missing; resumed if it holds a run).

  Returns:
    A TrainResult; when preempted, the state saved at the step it stopped.

  Raises:
    NonFiniteError: a step diverged (with `config.nonfinite='stop'`).
    CheckpointError: a bad workdir, checkpoint or write.
  """
  t_start = time.time()
  config = experiment.config
  total = experiment.total_steps
  latest = run_dir.latest_step(workdir)
  if latest is not None and latest > total:
    raise CheckpointError(
        f"workdir {workdir!r} holds a checkpoint at step {latest}, beyond this config's {total} steps; "
        f"set num_steps >= {latest} to go on, or use a new workdir")
  if latest is None:
    for source in (config.init_checkpoint, config.model.backbone_checkpoint):
      if source and run_dir.latest_step(source) is None:
        raise CheckpointError(f"no checkpoints in {source!r} (the run to start from)")
  run_dir.prepare(workdir, config.to_dict(), experiment.defaults)
  if preemption.requested():
    return TrainResult(None, latest or 0, True, {}, time.time() - t_start)
  state = experiment.init_state()
  if latest is None:  # Other runs are read before anything of this one is created.
    if config.model.backbone_checkpoint:
      state = experiment.init_backbone(config.model.backbone_checkpoint, state)
    if config.init_checkpoint:
      state = experiment.init_from(config.init_checkpoint, state)
  checkpointer = run_dir.Checkpointer(workdir, keep=config.keep_checkpoints)
  start_step = 0
  failed = True
  try:
    checkpointer.check_space(state, "any")  # A full disk is found before training, not at the first save.
    if latest is not None:
      start_step, state = checkpointer.restore(state)
    if start_step == total:
      if jax.process_index() == 0:
        print(f"the run in {workdir} finished at step {total}: nothing to train", file=sys.stderr, flush=True)
      result = TrainResult(state, total, False, {}, time.time() - t_start)
    else:
      run_dir.truncate_metrics(workdir, start_step)
      result = _loop(experiment, workdir, state, start_step, checkpointer, t_start)
    failed = False
  finally:
    # Pending saves finish either way; their error is raised only if nothing else was.
    checkpointer.close(quiet=failed)
  return result


def _loop(experiment, workdir: str, state: TrainState, start_step: int, checkpointer: run_dir.Checkpointer,
          t_start: float) -> TrainResult:
  config = experiment.config
  mesh, total = experiment.mesh, experiment.total_steps
  mode = config.nonfinite
  train_step = steps.compile_train_step(steps.guard(experiment.objective.train_step, mode), state, mesh)
  writer = run_dir.MetricWriter(workdir)
  progress = Progress(start_step, total)
  history, last = [], {}
  if jax.process_index() == 0:
    print(f"training {config.model.name} on {config.data.name}: steps {start_step}->{total} "
          f"on {mesh.size} device(s), {jax.process_count()} process(es)", file=sys.stderr, flush=True)
  step, checkpointed, preempted = start_step, (start_step or None), False
  pending = None  # The previous step's metrics, checked while the next step runs.
  try:
    for host_batch in experiment.train_source.iterate(start_step, total - start_step):
      if pending is not None:
        _check_finite(step, pending, checkpointed, mode)
      state, metrics = train_step(state, parallel.shard_batch(host_batch, mesh))
      step += 1
      pending = metrics
      history.append(metrics)
      checkpointer.check()
      if step == start_step + 1 and not run_dir.has_config(workdir):
        _check_finite(step, metrics, checkpointed, mode)  # The first step ran: the config works.
        run_dir.write_config(workdir, config.to_dict())
      stop = step < total and preemption.should_stop(step)
      log = step % config.log_every_steps == 0 or step == total
      save = stop or step == total or step % config.checkpoint_every_steps == 0
      if log or save:
        _check_finite(step, metrics, checkpointed, mode)
      if log:
        last = _mean_metrics(history)
        history = []
        writer.write(step, last)
        progress.report(step, last)
      if save:
        checkpointer.save(step, state, wait=stop)
        checkpointed = step
      if stop:
        preempted = True
        break
  finally:
    writer.close()
  if preempted and jax.process_index() == 0:
    print(f"SIGTERM: saved checkpoint at step {step}; rerun with the same workdir to resume",
          file=sys.stderr, flush=True)
  return TrainResult(state, step, preempted, last, time.time() - t_start)
