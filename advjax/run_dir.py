"""The run directory's files: the config, metrics, TensorBoard events, results.

  config.json       the config of the run (written once, checked on resume)
  checkpoints/      orbax checkpoints, the latest few (`advjax.checkpointing`)
  metrics.jsonl     one JSON record per logged step
  tensorboard/      event files with the same scalars
  summary.json      final metrics, config, wall time and device count
  eval.json         eval.py's results (`eval.output_file`)

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step
(`{"step": 100, "loss": ...}`), which is what tests and sweep tools read; the
TensorBoard event files hold the same scalars for people. Everything here
works on plain dicts, so it depends on nothing else in advjax.

Nothing a kill or a full disk can interrupt leaves a damaged file behind:
the JSON files are written to a temporary file and renamed into place
(`write_json`), and a partial last line of `metrics.jsonl` (a record cut by a
kill) is dropped on resume (`truncate_after`) and skipped when read.
"""

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax

from advjax.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
# Top-level config fields that may change when a run is resumed (its length,
# cadences and evaluation).
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "nonfinite", "eval", "evals", "train_evals", "distributed")


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def prepare(workdir: str, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
  """Checks the workdir is writable and, if it holds a run, that it is this run.

  Args:
    workdir: the run directory (created if missing).
    config: the run's config as a dict.
    defaults: the base config as a dict: a field the saved config lacks (a
      run started before the field existed) is no change while it keeps
      its default value.

  Raises:
    ConfigError: the workdir cannot be created or written.
    CheckpointError: the workdir holds a run with a different config.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be created: {e.strerror}") from e
  if not os.path.isdir(workdir) or not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not a writable directory")
  saved_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(saved_path):
    try:
      with open(saved_path) as f:
        saved = _flatten(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      checkpoints = os.path.join(workdir, "checkpoints")
      if os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints)):
        raise CheckpointError(f"workdir {workdir!r} holds checkpoints but its {CONFIG_FILE} is unreadable "
                              f"({e}); restore that file, or use a new workdir") from None
      # A config cut short before any checkpoint: this is still a fresh run; it is rewritten.
      return
    current = _flatten(config)
    default = _flatten(defaults or {})
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k, default.get(k)) != current.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES)
    if changed:
      raise CheckpointError(
          f"workdir {workdir!r} holds a run with a different config ({', '.join(changed)}); "
          "use a new workdir")


def has_config(workdir: str) -> bool:
  """Whether the workdir holds a readable config.json (one cut short by a kill does not count)."""
  try:
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
      json.load(f)
    return True
  except (OSError, json.JSONDecodeError, UnicodeDecodeError):
    return False


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON atomically: a temporary file renamed into place (process 0 only).

  Raises:
    CheckpointError: the file cannot be written (a full disk, permissions); an
      existing file at `path` is left as it was.
  """
  if jax.process_index() != 0:
    return
  _replace(path, json.dumps(value, indent=2) + "\n")


def _replace(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file, fsync and rename."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise CheckpointError(f"cannot write {path!r}: {e.strerror}") from e


def _records(path: str) -> list[dict]:
  """The parseable records of a metrics file; a line cut short by a kill is skipped."""
  records = []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def truncate_after(workdir: str, step: int) -> None:
  """Drops records logged after `step` and any partial line, so a resumed run logs each step once."""
  path = os.path.join(workdir, METRICS_FILE)
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  kept = [r for r in _records(path) if r.get("step", 0) <= step]
  _replace(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(workdir: str) -> list[dict]:
  """All complete records of a run's metrics.jsonl, in order."""
  return _records(os.path.join(workdir, METRICS_FILE))


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self._active:
      from tensorboardX import SummaryWriter  # Imported lazily: only the writing process needs it.
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """Prints a periodic line with steps/s and the remaining time."""

  def __init__(self, start_step: int, total_steps: int):
    self._start_step = start_step
    self._total = total_steps
    self._t0 = time.perf_counter()

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float("nan")
    shown = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())
    return f"step {step}/{self._total}  {shown}  {rate:.2f} steps/s  ETA {eta:.0f}s"

  def report(self, step: int, scalars: Mapping[str, float]) -> None:
    if jax.process_index() == 0:
      print(self.line(step, scalars), file=sys.stderr, flush=True)
