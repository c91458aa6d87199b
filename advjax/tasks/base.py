"""The task interface shared by classification and segmentation (see the package docstring)."""

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax.errors import ConfigError
from advjax.tasks import labels as labels_lib


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """Scoring rules for one kind of label; subclasses fix the label shape, targets and metrics.

  Attributes:
    num_classes: number of classes K; labels lie in [0, K), -1 = ignore for dense maps.
  """

  num_classes: int

  name = "task"
  label_rank = 1  # Rank of a batch of labels: [batch] or [batch, height, width].
  accuracy_key = "accuracy"  # The metric of `metric_values` that is the task's accuracy.

  def loss(self, logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """[batch] label-smoothed cross-entropy, averaged over a label map's valid positions."""
    return labels_lib.cross_entropy(logits, labels, label_smoothing)

  def correct(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """[batch] fraction of valid positions predicted right (0 or 1 for class labels)."""
    return labels_lib.correct(logits, labels)

  def success(self, logits: jax.Array, labels: jax.Array, attack_labels: jax.Array,
              targeted: bool) -> jax.Array:
    """[batch] fraction of valid positions where an attack reached its goal.

    Args:
      logits: [batch, ..., classes] logits on the attacked input.
      labels: [batch, ...] true labels (-1 ignored).
      attack_labels: [batch, ...] the labels the attack loss used (the
        targets when `targeted`).
      targeted: success is predicting `attack_labels`, else not predicting `labels`.

    Returns:
      [batch] float32 in [0, 1]; 0 or 1 for class labels.
    """
    pred = jnp.argmax(logits, axis=-1)
    hit = pred == attack_labels if targeted else pred != labels
    return labels_lib.mean_over_valid(hit.astype(jnp.float32), labels)

  @abc.abstractmethod
  def random_targets(self, rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Random target labels, different from `labels` wherever a label is valid."""

  @abc.abstractmethod
  def metric_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Additive statistics of one batch; `mask` [batch] is 1 for real examples, 0 for padding."""

  @abc.abstractmethod
  def accuracy_from_sums(self, sums: dict[str, jax.Array]) -> jax.Array:
    """The task's accuracy from `metric_sums` totals, jit-compatible (device-side searches)."""

  @abc.abstractmethod
  def metric_values(self, sums: dict[str, Any]) -> dict[str, Any]:
    """The task's metrics (JSON-ready Python values) from statistics summed over batches."""

  def accuracy(self, values: dict[str, Any]) -> float:
    """The task's accuracy (top-1, or global pixel accuracy) from `metric_values`."""
    return values[self.accuracy_key]

  def error_rate(self, values: dict[str, Any]) -> float:
    """1 - accuracy: the misclassification rate the robustness searches aim at."""
    return 1.0 - values[self.accuracy_key]

  def check_shapes(self, logits_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> None:
    """Raises ConfigError unless a model's logits fit this task's labels (batch axes excluded)."""
    if tuple(logits_shape[:-1]) != tuple(labels_shape) or logits_shape[-1] != self.num_classes:
      raise ConfigError(
          f"the model's output {tuple(logits_shape)} does not fit the {self.name} task's labels "
          f"{tuple(labels_shape)} with {self.num_classes} classes (a segmentation head on a "
          "classification dataset, or the reverse?)")
