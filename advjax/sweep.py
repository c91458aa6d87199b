"""Sweeps: several runs of an experiment, over variants and seeds, and the table of their results.

A finding smaller than the spread between training seeds is no finding, and
the papers' figures are grids (the shared-AT paper's figure 3 fine-tunes an
ERM model for every sharedness, radius and weight). A sweep config says both:

  runs         name -> an experiment config, one row of the table each; a
               run's `init_checkpoint` or `model.backbone_checkpoint` may name
               an earlier run of the sweep as '@<name>' (that run, at the same
               seed). A field of a run is `--config.runs.<name>.<field>`,
               unless its name holds a dot (`s1_eps76.5_sigma0.5`): change
               those in the config file.
  order        the runs' names in training and table order (ConfigDicts
               keep their keys sorted)
  seeds        the seeds every run is trained with, a grid axis of its own
               (`--config.seeds="(0,1,2)"`)
  columns      config fields shown in the table ('adversarial.heap_size'; blank
               for a run whose objective does not read that block)
  results      the results tabled, as flat names ('eps_uni/eps'); () for
               every number the runs' evaluations report
  pareto       x and y results of a Pareto plot, one front per group of runs
               (a run's group is its name up to the first '_'); '' for none
  perturbation the name of a perturbation every run's evaluation saved (a
               `<name>.npy` such as 'eps_uni'), tiled into perturbations.png

`run_sweep(sweep, workdir)` trains each (run, seed) in `<workdir>/<name>/seed<seed>`
with `advjax.runs.train_and_evaluate`, every entry of its `config.evals`
evaluated at the end of training into its summary.json; a run that has its
summary is read back, not redone, so a killed or preempted sweep resumes
where it stopped (SIGTERM stops it between runs, or inside one with that
run's checkpoint). Every config is validated before the first run starts.
It then writes `results.csv` (one row per run and seed), `results.md` (mean
and sample standard deviation over seeds per run; accuracies in percent),
and the figures. `python sweep.py --config <sweep config> --workdir <dir>`
runs one, with the CLI of train.py.

`shared_at_grid` builds the runs of the shared-AT paper's trade-off sweep,
and `variants` one run per argument of an experiment's config file.
"""

from __future__ import annotations

import csv
import importlib
import io
import itertools
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from advjax import config as config_lib, preemption, run_dir, runs, viz
from advjax.errors import ConfigError
from advjax.training import objectives

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
# Results that describe the evaluation rather than the model.
_NOT_RESULTS = ("num_examples", "num_pixels", "steps", "epochs", "target_rate")
# Result names shown in percent: accuracies and overlaps.
_PERCENT = ("accuracy", "miou", "fooling_ratio")
# Config fields that may name another run of the sweep as '@<name>'.
_REFERENCES = ("init_checkpoint", "model.backbone_checkpoint")


def sweep_config(runs_: Mapping[str, ml_collections.ConfigDict], *, seeds: Sequence[int] = (0,),
                 columns: Sequence[str] = (), results: Sequence[str] = (), pareto: tuple[str, str] = ("", ""),
                 perturbation: str = "") -> ml_collections.ConfigDict:
  """A sweep config (see the module docstring) from its runs and options."""
  c = ml_collections.ConfigDict()
  # Run names may hold dots (the radius of a grid point), which ConfigDict refuses by default.
  c.runs = ml_collections.ConfigDict(dict(runs_), allow_dotted_keys=True)
  c.order = tuple(runs_)
  c.seeds = tuple(int(s) for s in seeds)
  c.columns = tuple(columns)
  c.results = tuple(results)
  c.pareto = ml_collections.ConfigDict({"x": pareto[0], "y": pareto[1]})
  c.perturbation = perturbation
  return c


def shared_at_grid(experiment: ml_collections.ConfigDict, erm: ml_collections.ConfigDict, *,
                   heap_sizes: Sequence[int], eps: Sequence[float], weights: Sequence[float],
                   step_ratio: float) -> dict[str, ml_collections.ConfigDict]:
  """The runs of the shared-AT paper's sweep (sec. 6.1, figure 3): the ERM model, then one fine-tuning per point.

  Args:
    experiment: the shared_at config every point changes.
    erm: the config of the model every point fine-tunes.
    heap_sizes, eps, weights: the grid of s, eps (0-255 units) and sigma.
    step_ratio: the PGD step size as a fraction of eps (the paper's alpha = 0.5 eps).

  Returns:
    {'erm': erm, 's<s>_eps<eps>_sigma<sigma>': the point's config, ...}.
  """
  out = {"erm": erm.copy_and_resolve_references()}
  for s, e, sigma in itertools.product(heap_sizes, eps, weights):
    config = experiment.copy_and_resolve_references()
    config.objective = "shared_at"
    config.adversarial.heap_size = int(s)
    config.adversarial.weight = float(sigma)
    config.adversarial.attack.eps = float(e)
    config.adversarial.attack.step_size = float(step_ratio * e)
    config.init_checkpoint = "@erm"
    out[f"s{s}_eps{e:g}_sigma{sigma:g}"] = config
  return out


def variants(module: str, args: Sequence[str]) -> dict[str, ml_collections.ConfigDict]:
  """One run per argument of the config file `configs/<module>.py` (its `get_config(arg)`), named by the argument.

  Raises:
    ConfigError: no such config file, or an argument it refuses.
  """
  try:
    get_config = importlib.import_module(f"configs.{module}").get_config
  except ImportError as e:
    raise ConfigError(f"sweep: no experiment config configs/{module}.py ({e})") from None
  out = {}
  for arg in args:
    try:
      out[arg or "default"] = get_config(arg or None)
    except Exception as e:  # noqa: BLE001  (any failure of the user's config file is a config error)
      raise ConfigError(f"sweep: configs/{module}.py refuses the argument {arg!r}: {e}") from None
  return out


def run_dir_of(workdir: str, name: str, seed: int) -> str:
  """Where run `name` at `seed` lives."""
  return os.path.join(workdir, name, f"seed{seed}")


def _field(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for key in path.split("."):
    node = node[key]
  return node


def _set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for key in parents:
    node = node[key]
  node[leaf] = value


def _reads(config: ml_collections.ConfigDict, path: str) -> bool:
  """Whether the run uses the field: fields of another objective's block are left blank in the table."""
  owner = {cls.BLOCK for cls in objectives.OBJECTIVES.values() if cls.BLOCK}
  block = path.split(".")[0]
  return block not in owner or block == objectives.get(config.objective).BLOCK


def run_configs(sweep: ml_collections.ConfigDict, workdir: str,
                num_devices: int | None = None) -> list[tuple[str, int, ml_collections.ConfigDict]]:
  """Every (run name, seed, config) of the sweep, in training order, each config resolved and validated.

  A run's config gets its seed, every `config.evals` entry in its
  `train_evals` and its '@<name>' references resolved to the named run's
  directory at the same seed.

  Args:
    sweep: the sweep config.
    workdir: the sweep's directory.
    num_devices: the devices the runs are validated for; default all.

  Raises:
    ConfigError: a missing sweep field, a reference to no earlier run, or a bad run config.
  """
  for field in ("runs", "seeds"):
    if field not in sweep:
      raise ConfigError(f"sweep config: missing field {field!r} (see advjax.sweep)")
  names = list(sweep.get("order") or sorted(sweep.runs))
  if sorted(names) != sorted(sweep.runs):
    raise ConfigError(f"sweep config: order {tuple(names)} must name every run once (runs: {', '.join(sweep.runs)})")
  if not names or not sweep.seeds:
    raise ConfigError("sweep config: needs at least one run and one seed")
  out = []
  for seed in sweep.seeds:
    for position, name in enumerate(names):
      config = sweep.runs[name].copy_and_resolve_references()
      config.seed = int(seed)
      config.train_evals = tuple(config.evals)
      for field in _REFERENCES:
        value = _field(config, field)
        if isinstance(value, str) and value.startswith("@"):
          source = value[1:]
          if source not in names[:position]:
            raise ConfigError(f"sweep config: runs.{name}.{field} names {value!r}, which is not an earlier run "
                              f"(runs: {', '.join(names)})")
          _set_field(config, field, run_dir_of(workdir, source, seed))
      try:
        config_lib.validate(config, num_devices=num_devices or jax.device_count())
      except ConfigError as e:
        raise ConfigError(f"sweep config: runs.{name}: {e}") from None
      out.append((name, int(seed), config))
  return out


def flat_results(evals: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """`{'pgd10': {'eps76.5': {'accuracy': .9}}}` -> `{'pgd10/eps76.5/accuracy': .9}`; counts and non-numbers left out."""
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


def _percent(name: str) -> bool:
  return name.rsplit("/", 1)[-1].endswith(_PERCENT)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = (), results: Sequence[str] = ()) -> str:
  """A markdown table: one line per run, its `columns` (config values), then `mean ± std (n)` over seeds per result.

  Args:
    rows: one dict per (run, seed): 'run', 'seed', 'config' (the run's config
      values of `columns`), 'results' (flat results) and 'train_s'.
    columns: config fields to show.
    results: results to show; () for every result of any row, in order of appearance.

  Accuracies and mIoU are shown in percent. A result some seeds of a run lack
  is averaged over the seeds that have it, with its count.
  """
  names: list[str] = list(results)
  if not names:
    for row in rows:
      names += [n for n in row["results"] if n not in names]
  by_run: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    by_run.setdefault(row["run"], []).append(row)
  header = ["run", "seeds", *columns, *names, "train s"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for run, group in by_run.items():
    cells = [run, str(len(group))] + [str(group[0]["config"].get(c, "")) for c in columns]
    for name in names + ["train_s"]:
      values = [r["train_s"] if name == "train_s" else r["results"].get(name) for r in group]
      values = [v for v in values if v is not None]
      if not values:
        cells.append("")
        continue
      scale, digits = (100.0, 1) if _percent(name) else (1.0, 1 if name == "train_s" else 2)
      mean, std = mean_and_spread([scale * v for v in values])
      cell = f"{mean:.{digits}f}" if len(group) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
      cells.append(cell + ("" if len(values) == len(group) else f" (n={len(values)})"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> str:
  """results.csv: one line per (run, seed) with its `columns` and every result, unscaled."""
  names: list[str] = []
  for row in rows:
    names += [n for n in row["results"] if n not in names]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["run", "seed", *columns, *names, "train_s"])
  for row in rows:
    writer.writerow([row["run"], row["seed"], *(row["config"].get(c, "") for c in columns),
                     *(row["results"].get(n, "") for n in names), row["train_s"]])
  return out.getvalue()


def _write_figures(sweep: ml_collections.ConfigDict, rows: Sequence[dict[str, Any]], workdir: str) -> None:
  """pareto.png (one front per group of runs) and perturbations.png, where the sweep asks for them."""
  pareto = sweep.get("pareto") or {}
  x, y = pareto.get("x", ""), pareto.get("y", "")
  points = [dict(heap_size=row["run"].split("_")[0], clean_accuracy=row["results"][y], eps_uni=row["results"][x])
            for row in rows if x and x in row["results"] and y in row["results"]]
  if points:
    viz.plot_pareto(points, os.path.join(workdir, "pareto.png"), title=f"{y} vs {x}")
  tiles = []
  for row in rows:
    path = run_dir.artifact_path(row["dir"], f"{sweep.get('perturbation', '')}.npy")
    if sweep.get("perturbation") and os.path.exists(path):
      tiles.append(viz.amplify(np.load(path, allow_pickle=False)))
  if tiles:
    viz.save_image_grid([tiles], os.path.join(workdir, "perturbations.png"), scale=max(1, 96 // tiles[0].shape[0]))


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]] | None:
  """Trains and evaluates every (run, seed) not yet done; writes the tables and figures.

  Args:
    sweep: a sweep config (module docstring).
    workdir: the sweep's directory; each run lives in `<workdir>/<name>/seed<seed>`.

  Returns:
    One row per (run, seed): 'run', 'seed', 'dir', 'config' (the values of
    `sweep.columns`), 'results' (flat results) and 'train_s'; None if SIGTERM
    stopped the sweep (rerun it to resume).
  """
  planned = run_configs(sweep, workdir)  # Every config is checked before the first run.
  columns = tuple(sweep.get("columns", ()))
  rows = []
  with preemption.watch():
    for name, seed, config in planned:
      directory = run_dir_of(workdir, name, seed)
      summary = run_dir.read_summary(directory)
      if summary is None:
        if preemption.requested():
          return None
        if jax.process_index() == 0:
          print(f"sweep: {name} seed {seed}", file=sys.stderr, flush=True)
        summary = runs.train_and_evaluate(config, directory)
        if "preempted_at_step" in summary:
          if jax.process_index() == 0:
            print(f"SIGTERM: the sweep stopped in {directory}; rerun it with the same workdir to resume",
                  file=sys.stderr, flush=True)
          return None
      rows.append({"run": name, "seed": seed, "dir": directory,
                   "config": {c: _field(config, c) for c in columns if _reads(config, c)},
                   "results": flat_results(summary.get("evals", {})), "train_s": summary.get("wall_time_s")})
  if jax.process_index() == 0:
    results = tuple(sweep.get("results", ()))
    text = table(rows, columns, results)
    run_dir.write_text(os.path.join(workdir, RESULTS_MD), text)
    run_dir.write_text(os.path.join(workdir, RESULTS_CSV), csv_text(rows, columns))
    _write_figures(sweep, rows, workdir)
    print(text)
  return rows
