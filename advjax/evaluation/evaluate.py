"""Evaluation of a run's latest checkpoint, as eval.py runs it.

`evaluate_run(config, workdir)` restores the latest checkpoint of the run and
reports, on the held-out split:
  - clean accuracy;
  - accuracy under L-inf PGD-k at each eps of `config.eval.pgd_eps`
    (random start, step size 2.5 * eps / k unless set, restarts, optionally
    targeted toward a random wrong class);
  - eps_adv(delta) of the shared-adversarial-training paper (section 5.2):
    the smallest eps at which PGD with the annealed step size reaches
    misclassification rate delta, by a b-step binary search on [0, 255].
Results go to `<workdir>/eval.json` and are appended to the run's metrics.
"""

import json
import os
from typing import Any

import jax
import ml_collections

from advjax.attacks import pgd
from advjax.evaluation import robustness
from advjax.training import metrics_io
from advjax.training.trainer import Experiment, variables_of

EVAL_FILE = "eval.json"


def pgd_eval_config(eval_cfg: ml_collections.ConfigDict, eps: float) -> pgd.AttackConfig:
  """The evaluation PGD-k attack at radius `eps` (0-255 units)."""
  step_size = eval_cfg.pgd_step_size or 2.5 * eps / eval_cfg.pgd_steps
  return pgd.AttackConfig(norm="linf", eps=float(eps), step_size=float(step_size), num_steps=eval_cfg.pgd_steps,
                          init="uniform", restarts=eval_cfg.pgd_restarts, targeted=eval_cfg.pgd_targeted,
                          restart_select="misclassified")


def robustness_report(experiment: Experiment, variables: Any, batches: list[dict]) -> dict[str, float]:
  """Clean accuracy, PGD-k accuracies and eps_adv(delta) as `config.eval` asks."""
  eval_cfg = experiment.config.eval
  builder = experiment.logits_fn_builder
  rng = jax.random.PRNGKey(experiment.config.seed + 1)
  clean = robustness.clean_accuracy(builder, batches, variables=variables)
  report = {"clean_accuracy": clean["accuracy"], "num_examples": clean["num_examples"]}
  for eps in eval_cfg.pgd_eps:
    result = robustness.accuracy_under_attack(builder, batches, pgd_eval_config(eval_cfg, eps), rng,
                                              variables=variables)
    report[f"pgd{eval_cfg.pgd_steps}_eps{eps:g}_accuracy"] = result["accuracy"]
  if eval_cfg.eps_adv_delta:
    search = robustness.eps_adv_search(
        builder, batches, rng, robustness.eps_adv_config(num_steps=eval_cfg.eps_adv_attack_steps),
        delta=eval_cfg.eps_adv_delta, num_search_steps=eval_cfg.eps_adv_search_steps, variables=variables)
    report[f"eps_adv_{eval_cfg.eps_adv_delta:g}"] = search["eps_adv"]
    report[f"eps_adv_{eval_cfg.eps_adv_delta:g}_found"] = search["found"]
  return report


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the latest checkpoint in `workdir` and writes `eval.json`.

  Raises:
    CheckpointError: no checkpoint, or one that does not match the config.
  """
  experiment = Experiment(config)
  state = experiment.restore_latest(workdir, experiment.init_state())
  batches = list(experiment.eval_batches())  # Searches pass over the data many times.
  report = {"step": int(state.step), **robustness_report(experiment, variables_of(state), batches)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, EVAL_FILE), "w") as f:
      json.dump(report, f, indent=2)
    writer = metrics_io.MetricWriter(workdir)
    writer.write(report["step"], {f"eval/{k}": v for k, v in report.items() if k != "step"})
    writer.close()
    print(json.dumps(report, indent=2))
  return report
