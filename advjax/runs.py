"""What train.py and eval.py run: a training run with its final evaluation, and an evaluation of a run.

  train_and_evaluate(config, workdir)
      trains (or resumes) the run, evaluates the trained model with the
      `config.train_evals` entries of `config.evals` and writes
      `summary.json` (final training metrics, those results, steps, wall
      time, device and process counts, the config); a finished run with a
      summary is left as it is
  evaluate_run(config, workdir)
      restores the latest checkpoint's model and runs every entry of
      `config.evals`, writing `eval.json` (`config.eval.output_file`); the
      config must describe the run's model (`config.eval.cross_evaluate`
      allows another)

Both go through the evaluator registry (`advjax.evaluation`) with an
`EvalContext` from the experiment, so results are structured the same way
everywhere: `{entry name: {value name: value}}`. SIGTERM at any moment ends
either cleanly (`advjax.preemption`): training saves the current step, an
evaluation stops between evaluators, and nothing is half-written.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import ml_collections

from advjax import config as config_lib, evaluation, parallel, preemption, run_dir
from advjax.experiment import Experiment
from advjax.training import trainer


def _evaluate(config, experiment, variables, names, out_dir=None) -> dict[str, Any] | None:
  """The named evaluation entries, or None if SIGTERM arrived between them."""
  results = {}
  for name in names:
    if preemption.requested():
      return None
    results.update(evaluation.run(config.evals, experiment.eval_context(out_dir), variables, names=(name,)))
  return results


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
  with preemption.watch():
    parallel.initialize_distributed(**config.distributed)
    experiment = Experiment(config, devices)
    with run_dir.lock(workdir, "a training run"):
      return _train_and_evaluate(config, experiment, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, experiment: Experiment, workdir: str) -> dict[str, Any]:
  result = trainer.train(experiment, workdir)
  if result.preempted:
    if result.state is None and jax.process_index() == 0:
      print("SIGTERM before training started: nothing to save", file=sys.stderr, flush=True)
    return {"preempted_at_step": result.step}
  saved = run_dir.read_summary(workdir)
  if not result.last_metrics and saved is not None and saved.get("steps") == result.step:
    return saved
  results = _evaluate(config, experiment, result.state.variables, tuple(config.train_evals), out_dir=workdir)
  if results is None:
    return {"preempted_at_step": result.step}
  writer = run_dir.MetricWriter(workdir)
  writer.write(result.step, evaluation.scalars(results, "eval/"))
  writer.close()
  summary = {
      "final_train_metrics": result.last_metrics, "evals": results, "steps": result.step,
      "wall_time_s": result.wall_time_s, "device_count": jax.device_count(),
      "process_count": jax.process_count(), "config": config_lib.to_dict(config),
  }
  path = run_dir.write_summary(workdir, summary)
  if jax.process_index() == 0:
    print(f"evaluation {json.dumps(evaluation.scalars(results))}; summary in {path}", file=sys.stderr, flush=True)
  return summary


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the model of the latest checkpoint in `workdir` and writes `eval.json`.

  Only the model is read from the checkpoint, so `config` may be another
  experiment's config for the same model (its `evals` block then decides what
  is measured).

  Raises:
    ConfigError: the config's model differs from the run's.
    CheckpointError: no checkpoint, or one that holds another model.
  """
  with preemption.watch():
    parallel.initialize_distributed(**config.distributed)
    experiment = Experiment(config)
    with run_dir.lock(workdir, "an evaluation", create=False):
      return _evaluate_run(config, experiment, workdir)


def _evaluate_run(config: ml_collections.ConfigDict, experiment: Experiment, workdir: str) -> dict[str, Any]:
  if not config.eval.cross_evaluate:
    run_dir.check_same_model(workdir, config.to_dict())
  step, variables = experiment.restore_model(workdir)
  results = _evaluate(config, experiment, variables, tuple(config.eval.entries) or tuple(config.evals),
                      out_dir=workdir)
  if results is None:
    return {"preempted_at_step": step}
  report = {"step": step, **results}
  if jax.process_index() == 0:
    run_dir.write_eval(workdir, config.eval.output_file, report)
    writer = run_dir.MetricWriter(workdir)
    writer.write(step, evaluation.scalars(results, "eval/"))
    writer.close()
    print(json.dumps(report, indent=2))
  return report
