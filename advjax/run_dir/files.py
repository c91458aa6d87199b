"""The run directory's plain files: atomic JSON, and metrics.jsonl with its TensorBoard twin.

`metrics.jsonl` holds one JSON object per logged step (`{"step": 100,
"loss": ...}`), which is what tests and sweeps read; the TensorBoard event
files in `tensorboard/` hold the same scalars for people. Only process 0
writes. Nothing a kill or a full disk can interrupt leaves a damaged file
behind: JSON files are written to a temporary file and renamed into place
(`write_json`), and a partial last line of `metrics.jsonl` (a record cut by a
kill) is dropped on resume (`truncate_metrics`) and skipped when read.

(The writers are written here rather than taken from CommonLoopUtils: clu's
TensorBoard writer needs TensorFlow or PyTorch at run time, neither of which
advjax depends on, and a record cut by a kill must be droppable line by line.)
"""

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

from advjax.errors import CheckpointError

METRICS_FILE = "metrics.jsonl"


def strict_json(value: Any) -> Any:
  """`value` with every non-finite float (NaN, inf: "not found") as None, so that it is valid JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, Mapping):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  return value


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented, strict JSON atomically: a temporary file renamed into place (process 0 only).

  Non-finite floats are written as null (`strict_json`).

  Raises:
    CheckpointError: the file cannot be written (a full disk, permissions); an
      existing file at `path` is left as it was.
  """
  if jax.process_index() != 0:
    return
  _replace(path, json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n")


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (process 0 only); CheckpointError if it cannot be written."""
  if jax.process_index() == 0:
    _replace(path, text)


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


def truncate_metrics(workdir: str, step: int) -> None:
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
