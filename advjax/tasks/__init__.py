"""Tasks: what a label is, and how attacks, objectives and evaluators score predictions.

Everything in advjax that looks at labels does it through a task, so the same
attack, heap adversary, universal perturbation, objective or evaluator works
on class indices and on dense label maps alike:

  classification  labels [batch] class indices; an example is correct when
                  its argmax is the label; metrics: top-1 accuracy.
  segmentation    labels [batch, height, width] class maps, -1 = ignore; an
                  example's correctness and an attack's success are the
                  fractions of its valid pixels that are right / fooled;
                  metrics: a confusion matrix giving global pixel accuracy,
                  mean IoU and per-class IoU.

A task is a frozen dataclass (hashable, so it can be a static argument of
`jax.jit`) with these parts:

  loss(logits, labels, label_smoothing)     [batch] training cross-entropy
  correct(logits, labels)                   [batch] fraction of right positions
  success(logits, labels, attack_labels, targeted)
                                            [batch] fraction of positions where
                                            the attack reached its goal: a
                                            wrong class (untargeted) or the
                                            target class (targeted)
  random_targets(rng, labels, num_classes)  targets an attack may push toward
  metric_sums(logits, labels, mask)         additive statistics of one batch
  metric_values(sums)                       the metrics from summed statistics

`metric_sums` runs inside `jax.jit`; with a batch sharded over devices and
hosts its sums are global (jit inserts the reductions), so adding them over
batches and finishing with `metric_values` gives metrics that do not depend
on the device count or on how the data were padded.

`for_labels(labels)` picks the task from the rank of the labels, the default
of every attack; `for_dataset(info)` the one of a dataset. `TASKS` is the
registry of task classes by name.
"""

from advjax.errors import unknown_name
from advjax.tasks.base import Task
from advjax.tasks.classification import Classification
from advjax.tasks.segmentation import Segmentation, confusion_matrix, iou_from_confusion

TASKS = {"classification": Classification, "segmentation": Segmentation}


def get(name: str, num_classes: int) -> Task:
  """The task registered as `name` for `num_classes` classes."""
  if name not in TASKS:
    raise unknown_name("task", name, TASKS)
  return TASKS[name](num_classes)


def for_dataset(info) -> Task:
  """The task of a dataset: segmentation when its labels are dense maps."""
  return get("segmentation" if info.dense_labels else "classification", info.num_classes)


def for_labels(labels, num_classes: int = 0) -> Task:
  """The task implied by the labels' rank: [batch] classes or [batch, H, W] maps.

  Attacks use it when no task is given; `num_classes` only matters for metrics.
  """
  return get("classification" if labels.ndim == 1 else "segmentation", num_classes)


__all__ = ["Classification", "Segmentation", "TASKS", "Task", "confusion_matrix", "for_dataset",
           "for_labels", "get", "iou_from_confusion"]
