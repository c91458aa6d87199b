"""Where a run's numbers go: metrics.jsonl, TensorBoard events and a progress line.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step
(`{"step": 100, "loss": ...}`), which is what tests and sweep tools read; the
TensorBoard event files hold the same scalars for people.
"""

import json
import os
import sys
import time
from collections.abc import Mapping

import jax

METRICS_FILE = "metrics.jsonl"


def truncate_after(workdir: str, step: int) -> None:
  """Drops records logged after `step`, so a resumed run does not log a step twice."""
  path = os.path.join(workdir, METRICS_FILE)
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(kept)


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


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
