"""Checkpoints of the train state with orbax, in `<workdir>/checkpoints`, verified on restore.

A run saves every `checkpoint_every_steps` steps and at the end, keeping the
most recent few. Restarting a run with the same workdir restores the latest
checkpoint and continues; because data order and per-step randomness are
functions of the step, the resumed run is bitwise the uninterrupted one.

Integrity. Every checkpoint holds two items: `state`, the train state, and
`integrity`, a fingerprint of each of its arrays (a position-weighted sum of
the array's bits modulo 2^32, computed on the device, and whether it is
finite). A restore recomputes the fingerprints of what it read and compares:

  * a checkpoint whose arrays do not match their fingerprints, hold
    non-finite values, or cannot be decoded is *damaged*: it is moved aside
    to `checkpoints_damaged/<step>` (never deleted), the step and the first
    bad array are named on stderr, and the run falls back to the newest
    checkpoint that verifies. So a damaged checkpoint is never restored, and
    the checkpoint rotation (`keep_checkpoints`) never sees it.
  * a checkpoint whose structure, shapes or dtypes differ from the template
    holds another model or state: that is one clear `CheckpointError`, and
    nothing in the directory is modified.

Only finite states are saved (`save` refuses others), so with the training
loop's non-finite guard the newest checkpoint is always a good one.

Write failures. `checkpoints/` must be writable before a run starts
(`Checkpointer` checks with a probe file); saves run asynchronously, and the
error of a failed one (a full disk, a removed permission) is raised by the
next `save` or `check`, which the training loop calls every step, as one
`CheckpointError` naming the directory. The previous checkpoint is intact:
orbax writes into a temporary directory and renames it when complete.

`read(run_dir, template)` reads part of another run's latest checkpoint (its
model, for fine-tuning, evaluation or a pretrained backbone) with one shared
orbax checkpointer, without opening a manager on that run, verifying the
arrays it reads the same way.
"""

import functools
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

from advjax.cpu import compilation
from advjax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
STATE_ITEM = "state"
INTEGRITY_ITEM = "integrity"
# An odd multiplier: every array position contributes its bits times a distinct odd weight.
_GOLDEN = np.uint32(2654435761)


def path_name(path) -> str:
  """'params/conv1/kernel' for a pytree key path (attribute and dict keys alike)."""
  parts = []
  for entry in path:
    for attr in ("name", "key", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return "/".join(parts)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """[checksum, finite] as a uint32 pair."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  flat = jnp.ravel(x)
  size = flat.dtype.itemsize
  if flat.dtype == jnp.bool_ or size == 1:
    bits = flat.astype(jnp.uint32)
  elif size == 2:
    bits = lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
  else:
    bits = jnp.ravel(lax.bitcast_convert_type(flat, jnp.uint32))
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * _GOLDEN + jnp.uint32(1)
  checksum = jnp.sum(bits * weights, dtype=jnp.uint32)
  finite = jnp.all(jnp.isfinite(flat)) if jnp.issubdtype(flat.dtype, jnp.inexact) else jnp.bool_(True)
  return jnp.stack([checksum, finite.astype(jnp.uint32)])


@compilation.jit
def _fingerprint_arrays(tree: Any) -> Any:
  return jax.tree.map(_leaf_fingerprint, tree)


def fingerprints(tree: Any) -> dict[str, list]:
  """{array path: [checksum, finite]} of every array of `tree` (computed on the device).

  The checksum sum_i bits_i * (i * 2654435761 + 1) mod 2^32 changes when any
  single element changes and, with probability 1 - 2^-32, when several do.
  """
  prints = jax.device_get(_fingerprint_arrays(tree))
  flat, _ = jax.tree_util.tree_flatten_with_path(prints)
  return {path_name(path): [int(pair[0]), bool(pair[1])] for path, pair in flat}


def _first_mismatch(found: dict[str, list], saved: dict[str, list]) -> str | None:
  """The first array whose fingerprint differs from the saved one, or that is not finite."""
  for name, (checksum, finite) in found.items():
    if name not in saved:
      return f"{name} has no saved fingerprint"
    if checksum != saved[name][0]:
      return f"{name} does not match its checksum"
    if not finite:
      return f"{name} holds non-finite values"
  return None


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of a pytree of arrays, to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _shapes(tree: Any) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(p): (tuple(leaf.shape), str(jnp.dtype(leaf.dtype))) for p, leaf in flat}


def _structure_difference(template: Any, metadata: Any, partial: bool) -> str | None:
  """Why a saved tree (metadata) cannot be restored into `template`, or None."""
  want = _shapes(_abstract(template))
  have = {name: (tuple(m.shape), str(jnp.dtype(m.dtype))) for name, m in _shapes_of_metadata(metadata).items()}
  for name, spec in want.items():
    if name not in have:
      return f"it has no array {name}"
    if have[name][0] != spec[0]:
      return f"{name} has shape {have[name][0]}, the model needs {spec[0]}"
  extra = sorted(set(have) - set(want))
  if extra and not partial:
    return f"it holds arrays this state does not have ({', '.join(extra[:3])})"
  return None


def _shapes_of_metadata(metadata: Any) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(metadata, is_leaf=lambda v: hasattr(v, "shape"))
  return {path_name(p): m for p, m in flat if hasattr(m, "shape")}


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


class Checkpointer:
  """`ocp.CheckpointManager` for one run directory, with fingerprints and write checks."""

  def __init__(self, workdir: str, *, keep: int = 2, create: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    if create:
      _check_writable(self.directory)
    self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self._manager = self._open()
    self._pending: int | None = None  # The step of the save that may still be running.

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
        STATE_ITEM: ocp.StandardCheckpointHandler(), INTEGRITY_ITEM: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check(self) -> None:
    """Raises the error of a failed asynchronous save as one CheckpointError naming its step and the directory.

    The failed save's temporary directory is removed; the previous
    checkpoints are intact.
    """
    try:
      self._manager.check_for_errors()
    except Exception as e:  # orbax re-raises whatever the writer thread hit.
      step = self._pending
      self._remove_partial(step)
      which = "a checkpoint" if step is None else f"checkpoint {step}"
      raise CheckpointError(f"saving {which} in {self.directory} failed: {_first_line(e)[:300]}") from e

  def check_space(self, state: Any, step: int | str) -> None:
    """Raises CheckpointError unless the directory's disk has room for one more checkpoint of `state`.

    A checkpoint takes its arrays' bytes and some metadata; orbax writes a
    new one before it removes the oldest, so one checkpoint's room must be
    free. The estimate, 1.25 times the arrays' bytes and 256 KiB, errs high.
    """
    needed = int(1.25 * state_bytes(state)) + 256 * 1024
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointError(f"cannot save checkpoint {step}: {self.directory} has {_size(free)} free, and a "
                            f"checkpoint of this state needs about {_size(needed)}; free some space or use "
                            "another workdir")

  def save(self, step: int, state: Any, *, wait: bool = False) -> None:
    """Saves `state` (a pytree of arrays) with its fingerprints as checkpoint `step`.

    Raises:
      CheckpointError: a previous save failed, there is no room on the disk
        for this one, it cannot start, or the state holds non-finite values
        (it is never written).
    """
    self.check()
    self.check_space(state, step)
    prints = fingerprints(state)
    bad = next((name for name, (_, finite) in prints.items() if not finite), None)
    if bad is not None:
      raise CheckpointError(f"refusing to save checkpoint {step}: {bad} holds non-finite values")
    self._pending = step
    try:
      self._manager.save(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardSave(state), INTEGRITY_ITEM: ocp.args.JsonSave(prints)}), force=True)
      if wait:
        self._manager.wait_until_finished()
    except Exception as e:  # Disk full, permissions: one line naming the directory.
      self._remove_partial(step)
      raise CheckpointError(f"saving checkpoint {step} in {self.directory} failed: {_first_line(e)[:300]}") from e
    self.check()

  def _remove_partial(self, step: int | None) -> None:
    """Removes what a failed save of `step` left in the directory (orbax's '<step>.orbax-checkpoint-tmp*')."""
    if step is None or jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def restore(self, template: Any, step: int | None = None) -> tuple[int, Any]:
    """The newest checkpoint (or `step`) that verifies, restored into `template`'s structure.

    Args:
      template: a pytree with the structure, shapes, dtypes and shardings the
        checkpoint must have (a freshly initialised state).
      step: which checkpoint; None for the newest that verifies.

    Returns:
      (step, state).

    Raises:
      CheckpointError: no checkpoint, one that holds another model or state,
        or no checkpoint that verifies.
    """
    candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)

    def restore(candidate):
      restored = self._manager.restore(candidate, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardRestore(_abstract(template)), INTEGRITY_ITEM: ocp.args.JsonRestore()}))
      return restored[STATE_ITEM], restored[INTEGRITY_ITEM]

    return newest_good(self.directory, candidates, template, partial=False,
                       metadata=lambda c: self._manager.item_metadata(c)[STATE_ITEM], restore=restore,
                       damaged=self._set_aside)

  def _set_aside(self, step: int, why: str) -> None:
    """Moves a damaged checkpoint to `checkpoints_damaged/<step>` and says so on stderr."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.workdir, DAMAGED_DIR, str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.exists(target):
        shutil.rmtree(target)
      os.replace(source, target)
      print(f"warning: checkpoint {step} ({source}) is damaged: {why}; moved to {target}, "
            "falling back to the previous checkpoint", file=sys.stderr, flush=True)
    self._manager.close()
    self._manager = self._open()

  def close(self, quiet: bool = False) -> None:
    """Waits for pending saves and raises their error, if any (unless `quiet`, when another error is on its way)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      if not quiet:
        raise CheckpointError(f"saving a checkpoint in {self.directory} failed: {_first_line(e)}") from e
    finally:
      try:
        self._manager.close()
      except Exception:  # A manager whose writer failed may fail to close again; the error is reported.
        if not quiet:
          raise


def state_bytes(state: Any) -> int:
  """The bytes of a pytree's arrays (PRNG keys by their key data)."""
  total = 0
  for leaf in jax.tree.leaves(state):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    total += int(np.prod(leaf.shape)) * leaf.dtype.itemsize
  return total


def _size(n: int) -> str:
  """Bytes as a short human-readable size."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def _check_writable(directory: str) -> None:
  """Creates `directory` if needed and writes a probe file; CheckpointError if either fails."""
  probe = os.path.join(directory, ".write_probe")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(f"checkpoint directory {directory!r} is not writable: {e.strerror}") from e


@functools.lru_cache(maxsize=None)
def _readers() -> tuple[ocp.Checkpointer, ocp.Checkpointer]:
  return ocp.PyTreeCheckpointer(), ocp.Checkpointer(ocp.JsonCheckpointHandler())


def all_steps(run_dir: str) -> list[int]:
  """The finalised checkpoint steps of a run directory, in increasing order."""
  directory = os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR)
  return sorted(ocp.path.step.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def latest_step(run_dir: str) -> int | None:
  """The newest finalised checkpoint step of a run directory, or None."""
  directory = os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return None
  steps = ocp.path.step.checkpoint_steps(directory)
  return max(steps) if steps else None


def read(run_dir: str, template: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any]]:
  """Reads some fields of a run's saved train state, verified against their fingerprints.

  Args:
    run_dir: a run directory holding `checkpoints/`.
    template: a dict with some of the saved state's fields (e.g. {'params':
      ..., 'model_state': {'batch_stats': ...}}), each with the structure,
      shapes and dtypes to restore into. Fields not named, such as the
      optimiser state, are not read, so the checkpoint may come from a run
      with another optimiser or objective.
    step: which checkpoint; None for the latest.

  Returns:
    (step, the restored fields).

  Raises:
    CheckpointError: no checkpoint, fields that differ from `template`'s, or
      arrays that do not match their fingerprints.
  """
  directory = os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR)
  if step is not None:
    candidates = [step]
  else:
    candidates = sorted(ocp.path.step.checkpoint_steps(directory), reverse=True) if os.path.isdir(directory) else []
  trees, jsons = _readers()

  def metadata(candidate):
    tree = trees.metadata(os.path.join(directory, str(candidate), STATE_ITEM))
    return getattr(tree, "item_metadata", tree)

  def restore(candidate):
    abstract = _abstract(template)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                  partial_restore=True)
    base = os.path.join(directory, str(candidate))
    return trees.restore(os.path.join(base, STATE_ITEM), args=args), jsons.restore(os.path.join(base, INTEGRITY_ITEM))

  def damaged(candidate, why):
    # Another run's directory is read, not tidied: the damaged checkpoint stays where it is.
    print(f"warning: checkpoint {candidate} in {directory} is damaged: {why}; reading the previous checkpoint",
          file=sys.stderr, flush=True)

  return newest_good(directory, candidates, template, partial=True, metadata=metadata, restore=restore,
                     damaged=damaged)


def newest_good(directory: str, candidates: list[int], template: Any, *, partial: bool,
                metadata: Callable[[int], Any], restore: Callable[[int], tuple[Any, dict]],
                damaged: Callable[[int, str], None]) -> tuple[int, Any]:
  """The one verify-and-fall-back rule of every restore: the newest candidate that holds `template` and verifies.

  Newest first, a checkpoint whose metadata cannot be read, whose arrays
  cannot be decoded or do not match their fingerprints is damaged
  (`damaged(step, why)` is told, and the next one is tried). One whose
  metadata does not hold the template's arrays is passed over too, since
  damaged metadata can read as another tree; if no checkpoint verifies and
  one of them held another tree, that is the error (the run holds another
  model), else that none verifies.

  Args:
    directory: the checkpoints' directory, for messages.
    candidates: steps, newest first.
    template: the tree (or, with `partial`, the subtree) to restore into.
    partial: the checkpoint may hold more than `template`.
    metadata: step -> the saved tree's metadata.
    restore: step -> (restored tree, saved fingerprints).
    damaged: told each damaged checkpoint and why.

  Returns:
    (step, restored tree).

  Raises:
    CheckpointError: no candidate, or none that verifies.
  """
  if not candidates:
    raise CheckpointError(f"no checkpoints in {directory}")
  other_tree, problems = None, []

  def set_aside(candidate, why):
    problems.append(f"checkpoint {candidate} is damaged: {why}")
    damaged(candidate, why)

  for candidate in candidates:
    try:
      saved_tree = metadata(candidate)
    except Exception as e:  # Unreadable metadata: the checkpoint is damaged.
      set_aside(candidate, f"its metadata cannot be read ({_first_line(e)[:200]})")
      continue
    why = _structure_difference(template, saved_tree, partial=partial)
    if why is not None:
      other_tree = other_tree or (candidate, why)
      continue
    try:
      restored, fingerprints_saved = restore(candidate)
      problem = _first_mismatch(fingerprints(restored), fingerprints_saved)
    except Exception as e:  # Undecodable bytes.
      problem = f"it cannot be read ({_first_line(e)[:200]})"
    if problem is None:
      if other_tree is not None:
        damaged(other_tree[0], f"its metadata does not describe this config's model ({other_tree[1]}), while "
                               f"checkpoint {candidate} does")
      return candidate, restored
    set_aside(candidate, problem)
  if other_tree is not None:
    raise CheckpointError(f"checkpoint {other_tree[0]} in {directory} holds another model or state than this "
                          f"config's: {other_tree[1]}")
  raise CheckpointError(f"no checkpoint in {directory} verifies ({'; '.join(problems)})")
