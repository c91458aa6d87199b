"""What an evaluator is given: the task, the model, the data and one random key.

An `EvalContext` is built once per evaluation (by `advjax.experiment`, or by
hand in research code) and handed to every evaluator of `config.evals`:

  task          scores labels and accumulates metrics (`advjax.tasks`)
  model_fn      `variables -> (x -> logits)`, a builder that jitted evaluators
                take as a static argument, so evaluating a new checkpoint
                does not recompile
  held_out()    the held-out batches ({'image', 'label', 'mask'}, global
                arrays sharded over the mesh, padding masked out), materialised
                once because searches pass over them many times
  train_stream(batch_size, name)
                a restartable stream of un-augmented training batches
                (adversaries fitted on training data, such as the universal
                one, and measured on held-out data); its order is fixed by
                the stream's name
  key(name)     a PRNG key for a named use (an evaluator's entry name), so
                evaluators draw independent randomness from one key
  out_dir       where evaluators may write files (perturbations, figures), or None
  model         the network itself, for evaluators that look inside it
                (intermediate features), or None
  history()     the run's saved checkpoints as (step, variables), oldest
                first, for evaluators that follow a model through training,
                or None

Nothing here knows about training, checkpoints or the run directory.
"""

import dataclasses
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax

from advjax.tasks import Task


def name_to_int(name: str) -> int:
  """A stable 31-bit integer for a name (for `fold_in` and data seeds)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def named_key(key: jax.Array, name: str) -> jax.Array:
  """`key` folded with a name: independent keys for independent named uses."""
  return jax.random.fold_in(key, name_to_int(name))


@dataclasses.dataclass
class EvalContext:
  """Everything evaluators need (see the module docstring).

  Attributes:
    task: the task of the data.
    model_fn: builder `variables -> (x -> logits)`; hashable (a static jit argument).
    held_out: zero-argument callable returning the held-out batches (a list).
    train_stream: `(batch_size, name) -> (zero-argument callable -> iterator of batches)`.
    image_shape: (height, width, channels) of the model's input.
    rng: the evaluation's root key.
    out_dir: directory for files, or None.
    model: the network (a linen Module), or None.
    history: zero-argument callable returning [(step, variables)] of the run's
      checkpoints, or None.
  """
  task: Task
  model_fn: Callable[[Any], Callable[[jax.Array], jax.Array]]
  held_out: Callable[[], list[dict]]
  train_stream: Callable[[int, str], Callable[[], Iterator[dict]]]
  image_shape: tuple[int, int, int]
  rng: jax.Array
  out_dir: str | None = None
  model: Any = None
  history: Callable[[], list[tuple[int, Any]]] | None = None

  def key(self, name: str) -> jax.Array:
    """The PRNG key of a named use."""
    return named_key(self.rng, name)
