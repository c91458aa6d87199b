"""Sweeps of shared adversarial training: the accuracy/robustness trade-off.

The shared-adversarial-training paper (section 6, figure 3) fine-tunes an ERM
model with every combination of sharedness s, radius eps and weight sigma,
and plots clean accuracy against universal robustness eps_uni(delta) as one
Pareto front per sharedness. `run_sweep` does exactly that:

  1. trains the ERM model of `sweep.erm` (or reuses it if already trained);
  2. for each (s, eps, sigma) of the grid, fine-tunes it with the
     `shared_at` objective of `sweep.experiment`, the PGD step size being
     `sweep.step_ratio * eps` (the paper's alpha = 0.5 eps);
  3. evaluates every model on the held-out split (clean accuracy, and
     eps_adv / eps_uni as the experiment's `eval` block asks) and saves each
     universal perturbation;
  4. writes `results.csv`, `results.md`, `pareto.png` and
     `perturbations.png` to the sweep's directory.

Each point lives in its own run directory under the sweep's, so a killed
sweep resumes where it stopped: finished points are read back, not redone.
"""

import csv
import itertools
import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from advjax import config as config_lib, run_dir, runs, viz
from advjax.errors import ConfigError

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
COLUMNS = ("name", "sharedness", "eps", "adv_weight", "clean_accuracy", "eps_adv", "eps_uni", "train_time_s")


def point_config(sweep: ml_collections.ConfigDict, sharedness: int, eps: float, sigma: float,
                 erm_dir: str) -> ml_collections.ConfigDict:
  """The experiment config of one grid point: fine-tune the ERM model with shared AT."""
  config = sweep.experiment.copy_and_resolve_references()
  config.objective = "shared_at"
  config.adversarial.heap_size = int(sharedness)
  config.adversarial.weight = float(sigma)
  config.adversarial.attack.eps = float(eps)
  config.adversarial.attack.step_size = float(sweep.step_ratio * eps)
  config.init_checkpoint = erm_dir
  return config


def point_name(sharedness: int, eps: float, sigma: float) -> str:
  return f"s{sharedness}_eps{eps:g}_sigma{sigma:g}"


def _train_and_report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) one run, then evaluates it; a finished run is only read back."""
  eval_path = os.path.join(workdir, config.eval.output_file)
  if not (os.path.exists(eval_path) and os.path.exists(os.path.join(workdir, run_dir.SUMMARY_FILE))):
    runs.train_and_evaluate(config, workdir)
    runs.evaluate_run(config, workdir)
  with open(eval_path) as f:
    report = json.load(f)
  with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
    report["train_time_s"] = json.load(f)["wall_time_s"]
  return report


def entry_of(config: ml_collections.ConfigDict, kind: str) -> str | None:
  """The name of the first `config.evals` entry of type `kind`, or None."""
  return next((name for name, entry in config.evals.items() if entry.type == kind), None)


def _row(name: str, config: ml_collections.ConfigDict, report: dict, adversarial: bool) -> dict[str, Any]:
  def value(kind, key):
    entry = entry_of(config, kind)
    return report[entry][key] if entry is not None else ""

  return {
      "name": name,
      "sharedness": config.adversarial.heap_size if adversarial else "",
      "eps": config.adversarial.attack.eps if adversarial else "",
      "adv_weight": config.adversarial.weight if adversarial else "",
      "clean_accuracy": value("clean", "accuracy"),
      "eps_adv": value("eps_adv", "eps"),
      "eps_uni": value("eps_uni", "eps"),
      "train_time_s": report["train_time_s"],
  }


def write_tables(rows: list[dict], out_dir: str, deltas: tuple[float, float]) -> None:
  """results.csv and a Markdown table of the same rows."""
  with open(os.path.join(out_dir, RESULTS_CSV), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)

  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)

  header = ["run", "s", "eps", "sigma", "clean acc", f"eps_adv({deltas[0]:g})", f"eps_uni({deltas[1]:g})",
            "train s"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
  with open(os.path.join(out_dir, RESULTS_MD), "w") as f:
    f.write("\n".join(lines) + "\n")


def write_figures(rows: list[dict], run_dirs: list[str], out_dir: str, delta: float,
                  perturbation_name: str | None) -> None:
  """pareto.png (clean accuracy vs eps_uni per sharedness) and the universal perturbations side by side."""
  points = [dict(sharedness=r["sharedness"] if r["sharedness"] != "" else "ERM",
                 clean_accuracy=r["clean_accuracy"], eps_uni=r["eps_uni"])
            for r in rows if r["eps_uni"] != ""]
  if points:
    viz.plot_pareto(points, os.path.join(out_dir, "pareto.png"), delta=delta,
                    title="shared AT: clean accuracy vs eps_uni")
  perturbations = []
  for directory in run_dirs:
    path = os.path.join(directory, f"{perturbation_name}.npy")
    if perturbation_name and os.path.exists(path):
      xi = np.load(path, allow_pickle=False)
      perturbations.append(viz.amplify(xi))
  if perturbations:
    viz.save_image_grid([perturbations], os.path.join(out_dir, "perturbations.png"),
                        scale=max(1, 96 // perturbations[0].shape[0]))


def run_sweep(sweep: ml_collections.ConfigDict, out_dir: str) -> list[dict[str, Any]]:
  """Trains and evaluates the ERM model and every grid point; writes tables and figures.

  Args:
    sweep: a sweep config (see configs/compare_digits.py): `erm` and
      `experiment` experiment configs, `grid.sharedness`, `grid.eps` (0-255),
      `grid.adv_weight`, and `step_ratio`.
    out_dir: the sweep directory; run directories are `erm/` and one per point.

  Returns:
    One row per model with the columns of `COLUMNS`.
  """
  for field in ("erm", "experiment", "grid", "step_ratio"):
    if field not in sweep:
      raise ConfigError(f"sweep config: missing field {field!r}")
  os.makedirs(out_dir, exist_ok=True)
  erm_dir = os.path.join(out_dir, "erm")
  points = list(itertools.product(sweep.grid.sharedness, sweep.grid.eps, sweep.grid.adv_weight))
  # Every point's config is checked before the first model is trained.
  configs = [point_config(sweep, s, eps, sigma, erm_dir) for s, eps, sigma in points]
  num_devices = jax.device_count()
  for config in [sweep.erm, *configs]:
    config_lib.validate(config, num_devices=num_devices)
  experiment = sweep.experiment
  rate_of = {kind: experiment.evals[entry_of(experiment, kind)].get("rate", float("nan"))
             if entry_of(experiment, kind) else float("nan") for kind in ("eps_adv", "eps_uni")}

  rows = [_row("ERM", sweep.erm, _train_and_report(sweep.erm, erm_dir), adversarial=False)]
  run_dirs = [erm_dir]
  for (s, eps, sigma), config in zip(points, configs):
    name = point_name(s, eps, sigma)
    if jax.process_index() == 0:
      print(f"sweep point {name}", file=sys.stderr, flush=True)
    run_dir = os.path.join(out_dir, name)
    rows.append(_row(name, config, _train_and_report(config, run_dir), adversarial=True))
    run_dirs.append(run_dir)
  if jax.process_index() == 0:
    deltas = (rate_of["eps_adv"], rate_of["eps_uni"])
    write_tables(rows, out_dir, deltas)
    write_figures(rows, run_dirs, out_dir, deltas[1], entry_of(experiment, "eps_uni"))
    with open(os.path.join(out_dir, RESULTS_MD)) as f:
      print(f.read())
  return rows
