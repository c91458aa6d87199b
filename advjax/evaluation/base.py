"""The evaluator protocol and the helpers every evaluator shares.

An evaluator is a class registered by name (`advjax.evaluation.EVALUATORS`).
`config.evals` names the evaluations to run, big_vision style: each entry is
a ConfigDict with a `type` (the registry name) and that evaluator's
arguments, e.g.

    config.evals.pgd = ml_collections.ConfigDict(dict(type='pgd', eps=(8.0,), steps=40))

An evaluator class declares its arguments as a frozen dataclass `Args` (every
field with a default; `from_config` checks types and values and names a bad
field), is built as `cls(name, args, ctx)` with the entry's name and an
`EvalContext`, and `run(variables)` yields `(name, value)` pairs whose values
are JSON-ready numbers, booleans, strings, lists or dicts. The runner
collects them into `{entry name: {name: value}}`.

Metrics over a split are sums of per-batch statistics (`Task.metric_sums`)
computed by jitted functions taking the model builder as a static argument, so
one compile serves every checkpoint and every probe of a search.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax import typed_config
from advjax.attacks import core
from advjax.errors import ConfigError
from advjax.evaluation.context import EvalContext


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """`config.eval`: the held-out data every evaluation uses, and eval.py's output.

  Attributes:
    batch_size: global evaluation batch size.
    split: the held-out split.
    num_examples: evaluate on the first N held-out examples; 0 means all.
    output_file: name of eval.py's results file in the workdir.
    entries: eval.py runs only these `config.evals` entries (e.g.
      "('synthesis',)"); () runs them all.
    cross_evaluate: eval.py refuses a config whose model fields differ from
      the run's config.json; True allows it.
  """
  batch_size: int = 500
  split: str = "test"
  num_examples: int = 0
  output_file: str = "eval.json"
  entries: tuple = ()
  cross_evaluate: bool = False

  def __post_init__(self):
    if not 1 <= self.batch_size <= 2**24:
      raise ConfigError(f"batch_size={self.batch_size!r} must be in [1, 2**24]")
    if not 0 <= self.num_examples <= 2**31 - 1:
      raise ConfigError(f"num_examples={self.num_examples!r} must be >= 0 (0 = all)")
    if not (self.output_file.endswith(".json") and "/" not in self.output_file):
      raise ConfigError(f"output_file={self.output_file!r} must be a file name ending in .json")


class Evaluator(abc.ABC):
  """Base class of evaluators (see the module docstring)."""

  @dataclasses.dataclass(frozen=True)
  class Args:
    """No arguments."""

  def __init__(self, name: str, args: Any, ctx: EvalContext):
    self.name = name
    self.args = args
    self.ctx = ctx

  @classmethod
  def parse_args(cls, name: str, entry: dict[str, Any]) -> Any:
    """The evaluator's `Args` from a config entry (without its 'type'); ConfigError names a bad field."""
    return typed_config.from_mapping(cls.Args, entry, f"config.evals.{name}")

  @abc.abstractmethod
  def run(self, variables: Any) -> Iterator[tuple[str, Any]]:
    """Evaluates the model with `variables`, yielding (name, value) pairs."""


def task_for(task: tasks_lib.Task | None, model_fn: Callable, variables: Any, batch: dict) -> tasks_lib.Task:
  """`task`, or the task the batch's labels imply with the model's number of classes."""
  if task is not None:
    return task
  shape = jax.eval_shape(core.bind(model_fn, variables), batch["image"]).shape
  return tasks_lib.for_labels(batch["label"], shape[-1])


def first_examples(batches: Iterable[dict], limit: int) -> Iterator[dict]:
  """The batches restricted to their first `limit` real examples (padding masks extended); 0 = all."""
  if not limit:
    yield from batches
    return
  seen = 0
  for batch in batches:
    if seen >= limit:
      return
    real = batch["mask"] > 0
    keep = (seen + jnp.cumsum(real)) <= limit
    seen += int(jnp.sum(real))
    yield {**batch, "mask": batch["mask"] * keep.astype(batch["mask"].dtype)}


def add_sums(total: Any, sums: Any) -> Any:
  """Adds one batch's statistics to the running totals, on the device (no host round trip).

  The statistics are integer counts, so the totals are exact; fetch them once
  at the end (`jax.device_get`).
  """
  return sums if total is None else jax.tree.map(jnp.add, total, sums)


@functools.partial(compilation.jit, static_argnames=("model_fn", "task"))
def _clean_sums(model_fn, variables, batch, task):
  logits = core.bind(model_fn, variables)(batch["image"])
  return task.metric_sums(logits, batch["label"], batch["mask"])


def clean_metrics(model_fn: Callable, batches: Iterable[dict], *, task: tasks_lib.Task | None = None,
                  variables: Any = None) -> dict[str, Any]:
  """The task's metrics on unperturbed inputs.

  Args:
    model_fn: `x -> logits`, or a builder `variables -> (x -> logits)` when
      `variables` is given.
    batches: {'image', 'label', 'mask'} dicts (mask 1 = real example, 0 = padding).
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).

  Returns:
    `task.metric_values` of the summed statistics: {'accuracy',
    'num_examples'} for classification, {'pixel_accuracy', 'miou', 'iou',
    ...} for segmentation.
  """
  total = None
  for batch in batches:
    task = task_for(task, model_fn, variables, batch)
    total = add_sums(total, _clean_sums(model_fn, variables, batch, task))
  return task.metric_values(jax.device_get(total)) if total is not None else {}
