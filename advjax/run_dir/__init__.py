"""The run directory: the one place that reads and writes a run's files.

  .lock             held by the one process that works in the run (`lock`)
  config.json       the config of the run (written after its first step, checked on resume)
  checkpoints/      orbax checkpoints, the latest few, verified on restore (`checkpoints`)
  checkpoints_damaged/
                    checkpoints that failed verification, set aside, never deleted
  metrics.jsonl     one JSON record per logged step (`files`)
  tensorboard/      event files with the same scalars
  summary.json      final training metrics, the `train_evals` results, steps,
                    wall time, device counts, the config
  eval.json         eval.py's results (`config.eval.output_file`)

Every other module of advjax reaches a run through the functions below,
never through paths of its own: the training loop (`advjax.training.trainer`)
saves and restores its state with `Checkpointer`, writes metrics with
`MetricWriter` and the config with `write_config`; the drivers
(`advjax.runs`, `advjax.sweep`) write and read summaries and evaluation
results; the experiment and `advjax.saved_runs` read other runs' configs and
model variables (to resume, fine-tune, load a pretrained backbone, evaluate,
or follow a model through training). A model's variables are kept in a
checkpoint as the train state's fields, `{'params': ..., 'model_state':
{'batch_stats': ..., ...}}`; `read_variables` and `history` convert them to
and from the variables a model is applied to, `{'params': ...,
'batch_stats': ..., ...}`, and nothing else does.

Only process 0 writes files; every process reads. Nothing a kill or a full
disk can interrupt leaves a damaged file behind: JSON files are written to a
temporary file and renamed into place, a partial last line of metrics.jsonl
(a record cut by a kill) is dropped on resume and skipped when read, and
orbax writes a checkpoint into a temporary directory before renaming it.
This package depends on nothing in advjax but its errors and the CPU jit, so
every layer above can use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Mapping
from typing import Any

import jax

from advjax.errors import CheckpointError, ConfigError
from advjax.run_dir import checkpoints, files
from advjax.run_dir.checkpoints import CHECKPOINT_DIR, DAMAGED_DIR, Checkpointer, fingerprints, path_name
from advjax.run_dir.files import (METRICS_FILE, MetricWriter, read_metrics, strict_json, truncate_metrics, write_json,
                                  write_text)

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
# Top-level config fields that may change when a run is resumed (its length,
# cadences and evaluation).
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "nonfinite", "eval", "evals", "train_evals", "distributed")
# The config fields that define a run's model: its architecture and input normalisation
# (model.backbone_checkpoint: a model with a pretrained backbone normalises its inputs as that run's data).
MODEL_FIELDS = ("model.name", "model.head", "model.activation", "model.norm", "model.insert_block",
                "model.insert_after", "model.backbone_checkpoint", "data.name", "data.class_subset",
                "data.image_size")


def _path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def _read_object(path: str) -> dict[str, Any] | None:
  """A JSON object file, or None if it is missing, cut short or not an object."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError, UnicodeDecodeError):
    return None
  return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------- lock


@contextlib.contextmanager
def lock(workdir: str, purpose: str, create: bool = True):
  """Holds the run directory for one process (train.py, eval.py, a sweep's run) for the block.

  An exclusive `fcntl.flock` on `<workdir>/.lock`, taken by process 0 of a
  run (the one that writes); the file names the holder (its purpose, pid and
  host) for the error a second process gets. The operating system drops the
  lock when its holder dies, however it dies, so a stale lock of a killed
  run never blocks the next one. A workdir the block created and left
  without a file (it failed before writing anything) is removed again.

  Args:
    workdir: the run directory.
    purpose: who holds it, for the message ('train.py', 'eval.py').
    create: create a missing workdir; otherwise a missing one is not locked
      (there is nothing in it to protect).

  Raises:
    ConfigError: the workdir cannot be created or written.
    CheckpointError: another process holds the workdir.
  """
  if jax.process_index() != 0 or (not create and not os.path.isdir(workdir)):
    yield
    return
  created = not os.path.isdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    handle = open(_path(workdir, LOCK_FILE), "a+")
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be created or written: {e.strerror}") from e
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise CheckpointError(f"workdir {workdir!r} is in use by {holder}; wait for it to finish, or use "
                            "another workdir") from None
    handle.truncate(0)
    handle.write(f"{purpose} (pid {os.getpid()} on {socket.gethostname()})")  # 'a+' writes at the end: 0.
    handle.flush()
    try:
      yield
    except BaseException:
      # A run that failed before writing anything leaves no workdir it created (a bad init checkpoint).
      if created and _holds_nothing(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
      raise
    finally:
      handle.truncate(0)  # An empty file: nobody holds the workdir (closing releases the lock).


def _holds_nothing(directory: str) -> bool:
  """Whether `directory` holds no file but the lock file (empty directories aside)."""
  return all(name == LOCK_FILE and base == directory for base, _, names in os.walk(directory) for name in names)


# ----------------------------------------------------------------------- config


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
  saved_path = _path(workdir, CONFIG_FILE)
  if not os.path.exists(saved_path):
    return
  saved = _read_object(saved_path)
  if saved is None:
    if latest_step(workdir) is not None:
      raise CheckpointError(f"workdir {workdir!r} holds checkpoints but its {CONFIG_FILE} is unreadable or not "
                            "a JSON object; restore that file, or use a new workdir")
    # A config cut short before any checkpoint: this is still a fresh run; it is rewritten.
    return
  saved, current, default = _flatten(saved), _flatten(config), _flatten(defaults or {})
  changed = sorted(k for k in set(saved) | set(current)
                   if saved.get(k, default.get(k)) != current.get(k) and k.split(".")[0] not in RESUMABLE_CHANGES)
  if changed:
    raise CheckpointError(
        f"workdir {workdir!r} holds a run with a different config ({', '.join(changed)}); use a new workdir")


def has_config(workdir: str) -> bool:
  """Whether the workdir holds a readable config.json (one cut short by a kill does not count)."""
  return _read_object(_path(workdir, CONFIG_FILE)) is not None


def write_config(workdir: str, config: Mapping[str, Any]) -> None:
  """Writes the run's config.json (process 0)."""
  write_json(_path(workdir, CONFIG_FILE), dict(config))


def read_config(workdir: str, purpose: str) -> dict[str, Any]:
  """The config a run saved in its config.json.

  Args:
    workdir: the run directory.
    purpose: what the run is read for, named in the error (e.g. 'model.backbone_checkpoint').

  Raises:
    CheckpointError: no readable config.json with a 'data' block (one a kill cut short counts as none).
  """
  path = _path(workdir, CONFIG_FILE)
  config = _read_object(path)
  if config is None or not isinstance(config.get("data"), dict):
    why = "missing, unreadable or not a JSON object" if config is None else "it has no 'data' block"
    raise CheckpointError(f"{purpose}: cannot read the run's config from {path!r} ({why})")
  return config


def check_same_model(workdir: str, config: Mapping[str, Any]) -> None:
  """Raises ConfigError if `config` describes another model than the run in `workdir` trained.

  A run without a readable config.json passes.
  """
  saved = _read_object(_path(workdir, CONFIG_FILE))
  if saved is None:
    return
  saved, current = _flatten(saved), _flatten(config)
  differ = [f"{field} {saved[field]!r} -> {current.get(field)!r}" for field in MODEL_FIELDS
            if field in saved and saved[field] != current.get(field)]
  if differ:
    raise ConfigError(f"this config describes another model than the run in {workdir!r} trained "
                      f"({'; '.join(differ)}); fix the config, or set --config.eval.cross_evaluate=True "
                      "to evaluate it anyway")


# ------------------------------------------------------------- summary, eval


def read_summary(workdir: str) -> dict[str, Any] | None:
  """The run's summary.json, or None if it has none that can be read."""
  return _read_object(_path(workdir, SUMMARY_FILE))


def write_summary(workdir: str, summary: Mapping[str, Any]) -> str:
  """Writes the run's summary.json (process 0); returns its path."""
  path = _path(workdir, SUMMARY_FILE)
  write_json(path, dict(summary))
  return path


def read_eval(workdir: str, name: str) -> dict[str, Any] | None:
  """eval.py's results file `name` of the run, or None if it has none that can be read."""
  return _read_object(_path(workdir, name))


def write_eval(workdir: str, name: str, report: Mapping[str, Any]) -> str:
  """Writes eval.py's results file `name` (process 0); returns its path."""
  path = _path(workdir, name)
  write_json(path, dict(report))
  return path


def artifact_path(workdir: str, name: str) -> str:
  """Where an evaluator's file `name` (a perturbation, a figure) of the run lives."""
  return _path(workdir, name)


# ---------------------------------------------------------------- checkpoints


def latest_step(workdir: str) -> int | None:
  """The newest finalised checkpoint step of a run, or None."""
  return checkpoints.latest_step(workdir)


def all_steps(workdir: str) -> list[int]:
  """The finalised checkpoint steps of a run, in increasing order."""
  return checkpoints.all_steps(workdir)


def checkpoint_fields(variables: Mapping[str, Any]) -> dict[str, Any]:
  """A model's variables as the train-state fields a checkpoint holds: {'params', 'model_state'}."""
  return {"params": variables["params"], "model_state": {k: v for k, v in variables.items() if k != "params"}}


def read_variables(workdir: str, template: Mapping[str, Any], step: int | None = None) -> tuple[int, dict[str, Any]]:
  """Some of a model's variables from a run's checkpoint, verified against their fingerprints.

  Args:
    workdir: the run directory.
    template: variables {'params': ..., 'batch_stats': ..., ...} with the
      structure, shapes and dtypes to read (any subset of the saved model's:
      a backbone's, the plain model without auxiliary BatchNorm sets); the
      optimiser state and anything else of the train state is not read, so
      the run may have had another objective or optimiser.
    step: which checkpoint; None for the newest that verifies (a damaged
      newer one is named on stderr and passed over).

  Returns:
    (step, variables with `template`'s structure).

  Raises:
    CheckpointError: no checkpoint, none that verifies, or one that holds another model.
  """
  step, tree = checkpoints.read(workdir, checkpoint_fields(template), step)
  return step, {"params": tree["params"], **tree["model_state"]}


def history(workdir: str, template: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
  """Every checkpoint of a run as (step, model variables), oldest first (analyses over training)."""
  return [read_variables(workdir, template, step) for step in all_steps(workdir)]


__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "Checkpointer", "DAMAGED_DIR", "LOCK_FILE", "METRICS_FILE", "MODEL_FIELDS",
    "MetricWriter",
    "RESUMABLE_CHANGES", "SUMMARY_FILE", "all_steps", "artifact_path", "check_same_model", "checkpoint_fields",
    "checkpoints", "files", "fingerprints", "has_config", "history", "latest_step", "lock", "path_name", "prepare",
    "read_config", "read_eval", "read_metrics", "read_summary", "read_variables", "strict_json", "truncate_metrics",
    "write_config", "write_eval", "write_json", "write_summary", "write_text",
]
