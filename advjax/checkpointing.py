"""Checkpoints of the train state with orbax, in `<workdir>/checkpoints`.

A run saves every `checkpoint_every_steps` steps and at the end, keeping the
most recent few. Restarting a run with the same workdir restores the latest
checkpoint and continues; because data order and per-step randomness are
functions of the step, the resumed run is bitwise the uninterrupted one.

Restores are checked against the structure, shapes and dtypes of a freshly
initialised state, so a checkpoint from another model is one clear
`CheckpointError` and nothing in the directory is modified.

`read(run_dir, template)` reads part of another run's latest checkpoint (its
model, for fine-tuning, evaluation or a pretrained backbone) with one shared
orbax checkpointer, without opening a manager on that run.
"""

import functools
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from advjax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
# The item name CheckpointManager gives a single saved tree (`<step>/default`).
_ITEM = "default"


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of a pytree of arrays, to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` for one run directory."""

  def __init__(self, workdir: str, *, keep: int = 2, create: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, wait: bool = False) -> None:
    """Saves `state` (a pytree of arrays) as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
      self._manager.wait_until_finished()

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores checkpoint `step` (default latest) into the structure of `template`.

    Args:
      template: a pytree with the structure, shapes, dtypes and shardings the
        checkpoint must have (a freshly initialised state).
      step: which checkpoint; None for the latest.

    Raises:
      CheckpointError: if there is no checkpoint or it does not match `template`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(template)))
    except Exception as e:  # orbax raises many types for mismatched trees.
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} does not match this config's model/state: {first_line}") from e

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


@functools.lru_cache(maxsize=None)
def _reader() -> ocp.Checkpointer:
  return ocp.PyTreeCheckpointer()


def latest_step(run_dir: str) -> int | None:
  """The newest finalised checkpoint step of a run directory, or None."""
  directory = os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return None
  steps = ocp.path.step.checkpoint_steps(directory)
  return max(steps) if steps else None


def read(run_dir: str, template: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any]]:
  """Reads some fields of a run's saved train state.

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
    CheckpointError: no checkpoint, or its fields differ from `template`'s.
  """
  step = latest_step(run_dir) if step is None else step
  if step is None:
    raise CheckpointError(f"no checkpoints in {run_dir!r}")
  path = os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR, str(step), _ITEM)
  abstract = _abstract(template)
  args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=True)
  try:
    return step, _reader().restore(path, args=args)
  except Exception as e:  # orbax raises many types for mismatched trees.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"checkpoint {step} in {run_dir!r} does not hold this config's model: {first_line}") from e
