"""What train.py and eval.py run: a training run with its final evaluation, and an evaluation of a run.

  train_and_evaluate(config, workdir)
      trains (or resumes) the run, evaluates the trained model with the
      `config.train_evals` entries of `config.evals` and writes
      `summary.json` (final training metrics, those results, steps, wall
      time, device and process counts, the config)
  evaluate_run(config, workdir)
      restores the latest checkpoint's model and runs every entry of
      `config.evals`, writing `eval.json` (`config.eval.output_file`)

Both go through the evaluator registry (`advjax.evaluation`) with an
`EvalContext` from the experiment, so results are structured the same way
everywhere: `{entry name: {value name: value}}`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import ml_collections

from advjax import config as config_lib, evaluation, parallel, run_dir
from advjax.experiment import Experiment
from advjax.training import trainer


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
  parallel.initialize_distributed(**config.distributed)
  experiment = Experiment(config, devices)
  result = trainer.train(experiment, workdir)
  if result.preempted:
    return {"preempted_at_step": result.step}
  results = evaluation.run(config.evals, experiment.eval_context(), result.state.variables,
                           names=tuple(config.train_evals))
  writer = run_dir.MetricWriter(workdir)
  writer.write(result.step, evaluation.scalars(results, "eval/"))
  writer.close()
  summary = {
      "final_train_metrics": result.last_metrics, "evals": results, "steps": result.step,
      "wall_time_s": result.wall_time_s, "device_count": jax.device_count(),
      "process_count": jax.process_count(), "config": config_lib.to_dict(config),
  }
  path = os.path.join(workdir, run_dir.SUMMARY_FILE)
  run_dir.write_json(path, summary)
  if jax.process_index() == 0:
    print(f"evaluation {json.dumps(evaluation.scalars(results))}; summary in {path}", file=sys.stderr, flush=True)
  return summary


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the model of the latest checkpoint in `workdir` and writes `eval.json`.

  Only the model is read from the checkpoint, so `config` may be another
  experiment's config for the same model (its `evals` block then decides what
  is measured).

  Raises:
    CheckpointError: no checkpoint, or one that holds another model.
  """
  parallel.initialize_distributed(**config.distributed)
  experiment = Experiment(config)
  step, variables = experiment.restore_model(workdir)
  results = evaluation.run(config.evals, experiment.eval_context(workdir), variables)
  report = {"step": step, **results}
  if jax.process_index() == 0:
    run_dir.write_json(os.path.join(workdir, config.eval.output_file), report)
    writer = run_dir.MetricWriter(workdir)
    writer.write(step, evaluation.scalars(results, "eval/"))
    writer.close()
    print(json.dumps(report, indent=2))
  return report
