"""Image classification: labels [batch] class indices, metric top-1 accuracy."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax.tasks import base


@dataclasses.dataclass(frozen=True)
class Classification(base.Task):
  """One class per image."""

  name = "classification"
  label_rank = 1

  def random_targets(self, rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Per example a class drawn uniformly from the K - 1 wrong ones.

    Args:
      rng: PRNG key.
      labels: [batch] true classes.
      num_classes: K >= 2.

    Returns:
      [batch] int32 targets.
    """
    shift = jax.random.randint(rng, labels.shape, 1, num_classes)
    return ((labels + shift) % num_classes).astype(jnp.int32)

  def metric_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """{'correct': number of real examples classified right, 'count': number of real examples} (int32)."""
    real = mask > 0
    hit = jnp.argmax(logits, axis=-1) == labels
    return {"correct": jnp.sum(hit & real, dtype=jnp.int32), "count": jnp.sum(real, dtype=jnp.int32)}

  def accuracy_from_sums(self, sums: dict[str, jax.Array]) -> jax.Array:
    """Top-1 accuracy from (possibly device) sums, jit-compatible."""
    return sums["correct"] / jnp.maximum(sums["count"], 1)

  def metric_values(self, sums: dict[str, Any]) -> dict[str, Any]:
    """{'accuracy': top-1 accuracy over the real examples, 'num_examples'}."""
    count = int(sums["count"])
    return {"accuracy": int(sums["correct"]) / max(count, 1), "num_examples": count}
