"""The shared-AT sweep end to end on a tiny grid: tables, figures and resumption."""

import csv
import json
import os

import ml_collections
import pytest

from advjax import config as config_lib
from advjax import sweep
from advjax.errors import ConfigError
from configs import tiny


def _tiny_sweep():
  experiment = tiny.get_config()
  experiment.num_steps = 4
  experiment.adversarial.attack.num_steps = 2
  experiment.adversarial.attack.loss = "clipped_cross_entropy"
  experiment.eval.num_examples = 64
  experiment.eval.batch_size = 64
  experiment.evals.eps_adv = config_lib.eval_entry("eps_adv", rate=0.5, search_steps=2, attack=dict(num_steps=2))
  experiment.evals.eps_uni = config_lib.eval_entry("eps_uni", rate=0.75, search_steps=2)
  experiment.evals.eps_uni.universal.num_steps = 3
  c = ml_collections.ConfigDict()
  c.experiment = experiment
  c.erm = experiment.copy_and_resolve_references()
  c.step_ratio = 0.5
  c.grid = ml_collections.ConfigDict()
  c.grid.sharedness = (1, 4)
  c.grid.eps = (64.0,)
  c.grid.adv_weight = (0.5,)
  return c


def test_sweep_writes_tables_and_figures_and_resumes(tmp_path):
  out = str(tmp_path)
  rows = sweep.run_sweep(_tiny_sweep(), out)
  assert [r["name"] for r in rows] == ["ERM", "s1_eps64_sigma0.5", "s4_eps64_sigma0.5"]
  # Each row carries the structured results of its run's evaluation.
  for row, point in zip(rows, ("erm", "s1_eps64_sigma0.5", "s4_eps64_sigma0.5")):
    with open(os.path.join(out, point, "eval.json")) as f:
      report = json.load(f)
    assert (row["clean_accuracy"], row["eps_adv"], row["eps_uni"]) == (
        report["clean"]["accuracy"], report["eps_adv"]["eps"], report["eps_uni"]["eps"])
  with open(os.path.join(out, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == 3
  for name in ("results.md", "pareto.png", "perturbations.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  for point in ("erm", "s1_eps64_sigma0.5", "s4_eps64_sigma0.5"):
    assert os.path.exists(os.path.join(out, point, "eps_uni.npy"))
  # The fine-tuned runs started from the ERM model and trained with heaps of s.
  with open(os.path.join(out, "s4_eps64_sigma0.5", "config.json")) as f:
    text = f.read()
  assert '"heap_size": 4' in text and '"objective": "shared_at"' in text
  # A second call reads finished points back instead of retraining them.
  mtime = os.path.getmtime(os.path.join(out, "s4_eps64_sigma0.5", "eval.json"))
  assert sweep.run_sweep(_tiny_sweep(), out) == rows
  assert os.path.getmtime(os.path.join(out, "s4_eps64_sigma0.5", "eval.json")) == mtime


def test_sweep_checks_every_point_before_training(tmp_path):
  config = _tiny_sweep()
  config.grid.sharedness = (1, 3)  # 3 does not divide the per-device batch of 4.
  with pytest.raises(ConfigError, match="heap_size"):
    sweep.run_sweep(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), "erm"))
