"""advjax.seeds: which runs are started, and the mean-and-spread table of their results."""

import json
import os

import numpy as np
import pytest

from advjax import seeds
from advjax.errors import ConfigError


def _summary(workdir, arg, seed, evals):
  run = os.path.join(workdir, seeds.run_name(arg, seed))
  os.makedirs(run)
  with open(os.path.join(run, "summary.json"), "w") as f:
    json.dump({"evals": evals, "steps": 10}, f)


def test_table_is_mean_and_sample_std_over_seeds(tmp_path):
  accuracies = {"a": [0.91, 0.95, 0.90], "b": [0.5, 0.7]}
  for arg, values in accuracies.items():
    for seed, acc in enumerate(values):
      _summary(tmp_path, arg, seed, {"clean": {"accuracy": acc + 0.05, "num_examples": 1000},
                                     "pgd10": {"eps76.5": {"accuracy": acc, "num_examples": 1000}}})
  text = seeds.write_table(str(tmp_path), ["a", "b"], [0, 1, 2])
  lines = text.splitlines()
  assert lines[0] == "| run | seeds | clean/accuracy | pgd10/eps76.5/accuracy |"
  for line, (arg, values) in zip(lines[2:], accuracies.items()):
    v = 100 * np.array(values)
    assert line == (f"| {arg} | {len(values)} | {v.mean() + 5:.1f} ± {v.std(ddof=1):.1f} | "
                    f"{v.mean():.1f} ± {v.std(ddof=1):.1f} |")
  assert (tmp_path / "seeds.md").read_text() == text


def test_a_result_some_seeds_lack_says_how_many_it_averages():
  table = seeds.table({"a": {0: {"x": 0.5, "y": 0.1}, 1: {"x": 0.7}}})
  assert table.splitlines()[2] == "| a | 2 | 60.0 ± 14.1 | 10.0 ± 0.0 (n=1) |"


def test_finished_runs_are_not_started_again(tmp_path, monkeypatch):
  _summary(tmp_path, "baseline", 0, {"clean": {"accuracy": 0.9}})
  started = []

  class Done:
    returncode = 0

    def __init__(self, command, **_):
      started.append(command)

    def poll(self):
      return 0

  monkeypatch.setattr(seeds.subprocess, "Popen", Done)
  monkeypatch.setattr(seeds.time, "sleep", lambda _: None)
  failed = seeds.run_all("configs/denoise_digits.py", ["baseline", "median"], [0, 1], str(tmp_path), jobs=2,
                         overrides=["--config.num_epochs=1"], log=lambda *_: None)
  assert failed == []
  # Seed-major order; baseline/seed0 has its summary.
  assert [(c[2], c[3]) for c in started] == [
      ("--config=configs/denoise_digits.py:median", "--config.seed=0"),
      ("--config=configs/denoise_digits.py:baseline", "--config.seed=1"),
      ("--config=configs/denoise_digits.py:median", "--config.seed=1")]
  assert all(c[-1] == "--config.num_epochs=1" and c[1].endswith("train.py") for c in started)


def test_a_bad_arg_is_one_config_error_before_anything_runs(tmp_path):
  with pytest.raises(ConfigError, match="unknown variant 'bogus'"):
    seeds.run_all("configs/denoise_digits.py", ["baseline", "bogus"], [0], str(tmp_path))
  assert not os.listdir(tmp_path)
