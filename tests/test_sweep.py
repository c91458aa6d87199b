"""Sweeps (`advjax.sweep`): runs over variants and seeds, their resumption, and the table of their results."""

import csv
import io
import json
import os

import numpy as np
import pytest

from advjax import config as config_lib
from advjax import preemption, sweep
from advjax.errors import ConfigError
from configs import seeds as seeds_config
from configs import tiny


def _tiny_sweep():
  experiment = tiny.get_config()
  experiment.num_steps = 4
  experiment.adversarial.attack.num_steps = 2
  experiment.adversarial.attack.loss = "clipped_cross_entropy"
  experiment.eval.num_examples = 64
  experiment.eval.batch_size = 64
  experiment.evals.eps_adv = config_lib.eval_entry("eps_adv", rate=0.5, search_steps=2, attack=dict(num_steps=2))
  experiment.evals.eps_uni = config_lib.eval_entry("eps_uni", rate=0.75, search_steps=2, universal=dict(num_steps=3))
  runs = sweep.shared_at_grid(experiment, experiment, heap_sizes=(1, 4), eps=(64.0,), weights=(0.5,), step_ratio=0.5)
  return sweep.sweep_config(runs, columns=("adversarial.heap_size",), results=("clean/accuracy", "eps_uni/eps"),
                            pareto=("eps_uni/eps", "clean/accuracy"), perturbation="eps_uni")


def test_sweep_trains_every_run_writes_tables_and_figures_and_resumes(tmp_path):
  out = str(tmp_path)
  rows = sweep.run_sweep(_tiny_sweep(), out)
  names = ["erm", "s1_eps64_sigma0.5", "s4_eps64_sigma0.5"]
  assert [(r["run"], r["seed"]) for r in rows] == [(n, 0) for n in names]
  for row, name in zip(rows, names):
    directory = os.path.join(out, name, "seed0")
    assert row["dir"] == directory
    # Every evaluation entry ran at the end of training; the row holds its summary's results.
    with open(os.path.join(directory, "summary.json")) as f:
      evals = json.load(f)["evals"]
    assert set(evals) == {"clean", "eps_adv", "eps_uni"}
    assert row["results"]["clean/accuracy"] == evals["clean"]["accuracy"]
    assert row["results"]["eps_uni/eps"] == evals["eps_uni"]["eps"]
    assert os.path.exists(os.path.join(directory, "eps_uni.npy"))
  # '@erm' is the ERM run's directory at the same seed, and the points train with their heaps.
  with open(os.path.join(out, "s4_eps64_sigma0.5", "seed0", "config.json")) as f:
    saved = json.load(f)
  assert saved["init_checkpoint"] == os.path.join(out, "erm", "seed0")
  assert (saved["objective"], saved["adversarial"]["heap_size"], saved["adversarial"]["attack"]["step_size"]) == (
      "shared_at", 4, 32.0)
  table = (tmp_path / "results.md").read_text().splitlines()
  assert table[0] == "| run | seeds | adversarial.heap_size | clean/accuracy | eps_uni/eps | train s |"
  assert table[4].startswith("| s4_eps64_sigma0.5 | 1 | 4 | ")
  with open(os.path.join(out, "results.csv")) as f:
    assert [r["run"] for r in csv.DictReader(f)] == names
  for name in ("pareto.png", "perturbations.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  # A second call reads finished runs back instead of training them again.
  mtime = os.path.getmtime(os.path.join(out, "s4_eps64_sigma0.5", "seed0", "summary.json"))
  assert sweep.run_sweep(_tiny_sweep(), out) == rows
  assert os.path.getmtime(os.path.join(out, "s4_eps64_sigma0.5", "seed0", "summary.json")) == mtime


def test_every_run_is_checked_before_the_first_trains(tmp_path):
  config = _tiny_sweep()
  config.runs["s4_eps64_sigma0.5"].adversarial.heap_size = 3  # 3 does not divide the per-device batch of 4.
  with pytest.raises(ConfigError, match=r"runs\.s4_eps64_sigma0\.5: config\.adversarial\.heap_size"):
    sweep.run_sweep(config, str(tmp_path))
  config = _tiny_sweep()
  config.runs.erm.init_checkpoint = "@s1_eps64_sigma0.5"  # A later run.
  with pytest.raises(ConfigError, match="not an earlier run"):
    sweep.run_sweep(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_sigterm_stops_the_sweep_between_runs(tmp_path):
  preemption.clear()
  preemption._REQUESTED.set()  # pylint: disable=protected-access  (as SIGTERM's handler does)
  try:
    assert sweep.run_sweep(_tiny_sweep(), str(tmp_path)) is None
  finally:
    preemption.clear()
  assert not os.listdir(tmp_path)


def _row(run, seed, **results):
  return {"run": run, "seed": seed, "config": {}, "results": results, "train_s": 10.0 + seed}


def test_table_is_mean_and_sample_std_over_seeds():
  accuracies = {"a": [0.91, 0.95, 0.90], "b": [0.5, 0.7]}
  rows = [_row(run, seed, **{"clean/accuracy": acc + 0.05, "pgd10/eps76.5/accuracy": acc, "eps_adv/eps": 40.0 + seed})
          for run, values in accuracies.items() for seed, acc in enumerate(values)]
  lines = sweep.table(rows).splitlines()
  assert lines[0] == "| run | seeds | clean/accuracy | pgd10/eps76.5/accuracy | eps_adv/eps | train s |"
  for line, (run, values) in zip(lines[2:], accuracies.items()):
    v = 100 * np.array(values)  # Accuracies in percent, radii as they are.
    eps = 40.0 + np.arange(len(values))
    assert line == (f"| {run} | {len(values)} | {v.mean() + 5:.1f} ± {v.std(ddof=1):.1f} | "
                    f"{v.mean():.1f} ± {v.std(ddof=1):.1f} | {eps.mean():.2f} ± {eps.std(ddof=1):.2f} | "
                    f"{10 + eps.mean() - 40:.1f} ± {eps.std(ddof=1):.1f} |")
  # results.csv keeps every run and seed, unscaled.
  reader = list(csv.DictReader(io.StringIO(sweep.csv_text(rows))))
  assert len(reader) == 5 and float(reader[0]["pgd10/eps76.5/accuracy"]) == 0.91


def test_a_result_some_seeds_lack_says_how_many_it_averages():
  rows = [_row("a", 0, x_accuracy=0.5, y_accuracy=0.1), _row("a", 1, x_accuracy=0.7)]
  assert sweep.table(rows).splitlines()[2] == "| a | 2 | 60.0 ± 14.1 | 10.0 ± 0.0 (n=1) | 10.5 ± 0.7 |"


def test_variants_sweep_one_experiment_over_its_config_args_and_seeds(tmp_path):
  config = seeds_config.get_config("denoise_digits:baseline,median")
  assert list(config.runs) == ["baseline", "median"] and config.seeds == (0, 1, 2)
  assert config.runs.median.model.insert_block == "denoise:median"
  planned = sweep.run_configs(config, str(tmp_path))
  # Seed-major order, each run with its seed and every evaluation at the end of training.
  assert [(name, seed) for name, seed, _ in planned] == [
      ("baseline", 0), ("median", 0), ("baseline", 1), ("median", 1), ("baseline", 2), ("median", 2)]
  assert all(c.seed == seed and set(c.train_evals) == set(c.evals) for _, seed, c in planned)
  with pytest.raises(ConfigError, match="unknown variant 'bogus'"):
    seeds_config.get_config("denoise_digits:baseline,bogus")
