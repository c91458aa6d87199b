"""Evaluation of a run's latest checkpoint, as eval.py runs it.

`evaluate_run(config, workdir)` restores the latest checkpoint of the run and
reports, on the held-out split:
  - clean accuracy;
  - accuracy under L-inf PGD-k at each eps of `config.eval.pgd_eps`
    (random start, step size 2.5 * eps / k unless set, restarts, optionally
    targeted toward a random wrong class);
  - eps_adv(delta) of the shared-adversarial-training paper (section 5.2):
    the smallest eps at which PGD with the annealed step size reaches
    misclassification rate delta, by a b-step binary search on [0, 255];
  - eps_uni(delta), the same search around the universal adversary
    (stochastic PGD on m_k-example training batches, measured on the
    held-out split), with the perturbation found saved as
    `universal_perturbation.npy` and an amplified `universal_perturbation.png`;
  - accuracy and fooling ratio under a universal perturbation of fixed radius
    (the universal-adversarial-training paper's metric), optionally beside the
    iterative DeepFool universal perturbation with the wall time of each.
Results go to `<workdir>/eval.json` (`eval.output_file`) and are appended to the run's metrics.
"""

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from advjax import data, parallel, viz
from advjax.attacks import pgd, universal, universal_deepfool
from advjax.evaluation import robustness
from advjax.training import metrics_io
from advjax.training.trainer import Experiment

UNIVERSAL_FILE = "universal_perturbation"


def pgd_eval_config(eval_cfg: ml_collections.ConfigDict, eps: float) -> pgd.AttackConfig:
  """The evaluation PGD-k attack at radius `eps` (0-255 units)."""
  step_size = eval_cfg.pgd_step_size or 2.5 * eps / eval_cfg.pgd_steps
  return pgd.AttackConfig(norm="linf", eps=float(eps), step_size=float(step_size), num_steps=eval_cfg.pgd_steps,
                          init="uniform", restarts=eval_cfg.pgd_restarts, targeted=eval_cfg.pgd_targeted,
                          restart_select="misclassified")


def universal_attack_batches(experiment: Experiment) -> Callable[[], Iterator[dict]]:
  """A restartable stream of m_k-example training batches for the universal adversary.

  The adversary is fitted on training data and measured on held-out data, as
  the paper fits on validation images and measures on test images.
  """
  source = _unaugmented_train_source(experiment, experiment.config.eval.universal_batch_size)
  return lambda: (parallel.shard_batch(source.batch(k), experiment.mesh) for k in itertools.count())


def _unaugmented_train_source(experiment: Experiment, batch_size: int) -> data.TrainSource:
  data_cfg = experiment.config.data.copy_and_resolve_references()
  data_cfg.augment = False
  return data.make_train_source(
      data_cfg, global_batch_size=batch_size, seed=experiment.config.seed + 2,
      process_index=experiment.process_index, process_count=experiment.process_count)


def universal_attack_report(experiment: Experiment, variables: Any, batches: list[dict], eps: float,
                            out_dir: str | None) -> dict[str, float]:
  """Accuracy and fooling ratio under universal perturbations of radius `eps` (UAT paper, tables 1-2).

  The perturbation of `eval.universal` is fitted on training batches and
  measured on the held-out batches; with `eval.universal_deepfool_examples`,
  the iterative DeepFool universal perturbation (algorithm 1) is fitted on
  that many training images too, and both attacks' wall times are reported.
  """
  eval_cfg = experiment.config.eval
  builder = experiment.logits_fn_builder
  rng = jax.random.PRNGKey(experiment.config.seed + 3)
  cfg = dataclasses.replace(universal.UniversalConfig.from_config(eval_cfg.universal), eps=float(eps))
  start = time.perf_counter()
  xi = universal.universal_perturbation(builder, universal_attack_batches(experiment), rng, cfg,
                                        tuple(experiment.info.image_shape), variables=variables)
  xi = jax.block_until_ready(xi)
  prefix = f"universal_eps{eps:g}"
  report = _universal_metrics(experiment, variables, batches, xi, prefix, time.perf_counter() - start)
  if out_dir is not None and jax.process_index() == 0:
    viz.save_perturbation(np.asarray(xi), os.path.join(out_dir, prefix), eps=eps / 255.0,
                          scale=max(1, 128 // xi.shape[0]))
  if eval_cfg.universal_deepfool_examples:
    count = eval_cfg.universal_deepfool_examples
    source = _unaugmented_train_source(experiment, count)
    images = source.batch(0)["image"]
    start = time.perf_counter()
    deepfool_cfg = universal_deepfool.UniversalDeepFoolConfig(eps=float(eps),
                                                             max_passes=eval_cfg.universal_deepfool_passes)
    result = universal_deepfool.universal_deepfool(builder(variables), images, rng, deepfool_cfg)
    v = jax.block_until_ready(result.perturbation)
    report.update(_universal_metrics(experiment, variables, batches, v, f"deepfool_universal_eps{eps:g}",
                                     time.perf_counter() - start))
  return report


def _universal_metrics(experiment: Experiment, variables: Any, batches: list[dict], xi: jax.Array,
                       prefix: str, seconds: float) -> dict[str, float]:
  result = universal.evaluate_universal(experiment.logits_fn_builder, batches, xi, variables=variables)
  return {f"{prefix}_accuracy": result["accuracy"], f"{prefix}_fooling_ratio": result["fooling_ratio"],
          f"{prefix}_seconds": seconds}


def robustness_report(experiment: Experiment, variables: Any, batches: list[dict],
                      out_dir: str | None = None) -> dict[str, float]:
  """Clean accuracy, PGD-k accuracies, eps_adv(delta) and eps_uni(delta) as `config.eval` asks.

  Args:
    experiment: the experiment whose model is evaluated.
    variables: the model variables.
    batches: the held-out batches.
    out_dir: where to save the universal perturbation found by the eps_uni
      search (`universal_perturbation.npy` and an amplified `.png`); None skips.
  """
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
  if eval_cfg.eps_uni_delta:
    search, xi = universal.eps_uni_search(
        builder, universal_attack_batches(experiment), batches, rng,
        universal.UniversalConfig.from_config(eval_cfg.universal), delta=eval_cfg.eps_uni_delta,
        num_search_steps=eval_cfg.eps_uni_search_steps, variables=variables)
    report[f"eps_uni_{eval_cfg.eps_uni_delta:g}"] = search["eps_uni"]
    report[f"eps_uni_{eval_cfg.eps_uni_delta:g}_found"] = search["found"]
    if out_dir is not None and xi is not None and jax.process_index() == 0:
      viz.save_perturbation(xi, os.path.join(out_dir, UNIVERSAL_FILE), eps=search["eps_uni"] / 255.0,
                            scale=max(1, 128 // xi.shape[0]))
  for eps in eval_cfg.universal_eps:
    report.update(universal_attack_report(experiment, variables, batches, eps, out_dir))
  return report


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the model of the latest checkpoint in `workdir` and writes `eval.json`.

  Only the model is read from the checkpoint, so `config` may be another
  experiment's config for the same model (its `eval` block then decides what
  is measured).

  Raises:
    CheckpointError: no checkpoint, or one that holds another model.
  """
  experiment = Experiment(config)
  step, variables = experiment.restore_model(workdir)
  batches = list(experiment.eval_batches())  # Searches pass over the data many times.
  report = {"step": step, **robustness_report(experiment, variables, batches, workdir)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, config.eval.output_file), "w") as f:
      json.dump(report, f, indent=2)
    writer = metrics_io.MetricWriter(workdir)
    writer.write(report["step"], {f"eval/{k}": v for k, v in report.items() if k != "step"})
    writer.close()
    print(json.dumps(report, indent=2))
  return report
