"""Repeated runs of one experiment over config args and seeds, and their mean and spread.

A finding smaller than the spread between training seeds is no finding: the
README's tables report, for each variant of an experiment (a config arg:
`configs/denoise_digits.py:median`), the mean and sample standard deviation
of every evaluation result over several seeds. `run_all` trains every
(arg, seed) with `train.py` in its own process, `jobs` at a time, each in
`<workdir>/<arg>/seed<seed>`. Keep `jobs` at 1 unless the runs are known to
leave the machine idle: on a CPU one run already uses every core, and on one
H200 nine denoising runs side by side (ResNet-14 on the digits, PGD-10
training) each made about 1 step/s, no faster than one run on two CPU cores.
A run that has its summary.json is read back, not redone, so a killed
invocation resumes. `table` reads the summaries back into one markdown table.

Nothing here knows an experiment: a result is any number under a summary's
`evals` (`pgd10/eps76.5/accuracy`), whatever evaluator wrote it.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from advjax import run_dir
from advjax.errors import ConfigError

LOG_DIR = "logs"
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
TABLE_FILE = "seeds.md"
# Results that describe the evaluation rather than the model.
_NOT_RESULTS = ("num_examples",)


def run_name(arg: str, seed: int) -> str:
  return os.path.join(arg or "default", f"seed{seed}")


def train_command(config_path: str, arg: str, seed: int, workdir: str,
                  overrides: Sequence[str] = ()) -> list[str]:
  """The train.py command line of one (arg, seed) run."""
  config = f"{config_path}:{arg}" if arg else config_path
  return [sys.executable, TRAIN_SCRIPT, f"--config={config}", f"--config.seed={seed}",
          f"--workdir={workdir}", *overrides]


def run_all(config_path: str, args: Sequence[str], seeds: Sequence[int], workdir: str, *, jobs: int = 1,
            overrides: Sequence[str] = (), log=print) -> list[str]:
  """Trains and evaluates every (arg, seed) not yet done; returns the runs that failed.

  Each run's output goes to `<workdir>/logs/<arg>_seed<seed>.log`. Runs are
  started in seed-major order (every arg at the first seed, then the next),
  so a run cut short still leaves whole seeds.
  """
  if not os.path.isfile(config_path):
    raise ConfigError(f"config file {config_path!r} does not exist")
  if jobs < 1:
    raise ConfigError(f"jobs must be at least 1, got {jobs}")
  check_args(config_path, args)
  os.makedirs(os.path.join(workdir, LOG_DIR), exist_ok=True)
  pending = [(arg, seed) for seed in seeds for arg in args
             if not os.path.exists(os.path.join(workdir, run_name(arg, seed), run_dir.SUMMARY_FILE))]
  running: dict[tuple[str, int], tuple[subprocess.Popen, Any, float]] = {}
  failed = []
  while pending or running:
    while pending and len(running) < jobs:
      arg, seed = pending.pop(0)
      log_file = open(os.path.join(workdir, LOG_DIR, f"{arg or 'default'}_seed{seed}.log"), "w")
      command = train_command(config_path, arg, seed, os.path.join(workdir, run_name(arg, seed)), overrides)
      running[(arg, seed)] = (subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT),
                              log_file, time.time())
      log(f"started {run_name(arg, seed)}")
    time.sleep(1.0)
    for key, (proc, log_file, start) in list(running.items()):
      if proc.poll() is None:
        continue
      log_file.close()
      del running[key]
      status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log_file.name})"
      log(f"{status}: {run_name(*key)} in {time.time() - start:.0f}s")
      if proc.returncode != 0:
        failed.append(run_name(*key))
  return failed


def check_args(config_path: str, args: Sequence[str]) -> None:
  """Raises ConfigError unless the config file's `get_config` accepts every arg."""
  spec = importlib.util.spec_from_file_location("_seeds_config", config_path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    for arg in args:
      module.get_config(arg or None)
  except Exception as e:  # noqa: BLE001  (any failure of the user's config file is a config error)
    raise ConfigError(f"config {config_path!r}: {type(e).__name__}: {e}") from None


def flat_results(evals: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """`{'pgd10': {'eps76.5': {'accuracy': .9}}}` -> `{'pgd10/eps76.5/accuracy': .9}`, counts left out."""
  out = {}
  for k, v in evals.items():
    if isinstance(v, Mapping):
      out.update(flat_results(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_RESULTS:
      out[f"{prefix}{k}"] = float(v)
  return out


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def collect(workdir: str, args: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
  """arg -> seed -> flat results, for every run that has a summary."""
  out: dict[str, dict[int, dict[str, float]]] = {}
  for arg in args:
    for seed in seeds:
      path = os.path.join(workdir, run_name(arg, seed), run_dir.SUMMARY_FILE)
      if os.path.exists(path):
        with open(path) as f:
          out.setdefault(arg, {})[seed] = flat_results(json.load(f).get("evals", {}))
  return out


def table(results: Mapping[str, Mapping[int, Mapping[str, float]]], scale: float = 100.0,
          digits: int = 1) -> str:
  """A markdown table: one row per arg, one column per result, `mean ± std (n)` over seeds.

  Values are multiplied by `scale` (accuracies in percent by default). A
  result some seeds of an arg lack is averaged over the seeds that have it.
  """
  columns: list[str] = []
  for per_seed in results.values():
    for flat in per_seed.values():
      columns += [c for c in flat if c not in columns]
  lines = ["| run | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
  for arg, per_seed in results.items():
    cells = []
    for column in columns:
      values = [flat[column] * scale for flat in per_seed.values() if column in flat]
      if not values:
        cells.append("")
        continue
      mean, std = mean_and_spread(values)
      cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}" + ("" if len(values) == len(per_seed) else f" (n={len(values)})"))
    lines.append(f"| {arg or 'default'} | {len(per_seed)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_table(workdir: str, args: Sequence[str], seeds: Sequence[int]) -> str:
  """Writes `<workdir>/seeds.md` from the runs' summaries; returns its text."""
  text = table(collect(workdir, args, seeds))
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(text)
  return text
