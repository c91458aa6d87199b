"""Semantic segmentation: labels [batch, height, width] class maps, -1 = ignore.

The metrics are those of the segmentation papers, computed from one
confusion matrix C (C[i, j] = number of valid pixels of true class i
predicted as class j) summed over every image of the split:

  global pixel accuracy  sum_i C[i, i] / sum_ij C[i, j]
  IoU of class i         C[i, i] / (sum_j C[i, j] + sum_j C[j, i] - C[i, i])
  mean IoU               the mean of the IoUs of the classes that occur in the
                         ground truth or the predictions (a class absent from
                         both has no IoU and is left out, as in the usual
                         VOC/Cityscapes evaluation)

Pixels labelled -1 and padding examples are left out of C. Because C is a sum,
it does not depend on how the split is cut into batches, devices or hosts.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.tasks import base, labels as labels_lib


def confusion_matrix(pred: jax.Array, labels: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
  """C[i, j]: the (weighted) number of valid positions of class i predicted as j.

  Args:
    pred: [...] predicted classes.
    labels: [...] true classes; negative entries are left out.
    num_classes: K.
    weights: optional [...] 0/1 per position (0 for padding examples).

  Returns:
    [K, K] int32 counts (exact up to 2^31 pixels per cell).
  """
  keep = labels_lib.valid(labels)
  if weights is not None:
    keep = keep & (weights > 0)
  index = jnp.maximum(labels, 0) * num_classes + jnp.clip(pred, 0, num_classes - 1)
  counts = jnp.bincount(index.reshape(-1), weights=keep.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-class IoU and which classes have one (present in the labels or the predictions).

  Args:
    confusion: [K, K] counts, rows true classes, columns predictions.

  Returns:
    (iou [K] float64 with 0 where undefined, present [K] bool).
  """
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
  present = union > 0
  return np.where(present, hits / np.maximum(union, 1.0), 0.0), present


@dataclasses.dataclass(frozen=True)
class Segmentation(base.Task):
  """One class per pixel."""

  name = "segmentation"
  label_rank = 3
  accuracy_key = "pixel_accuracy"

  def random_targets(self, rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Per image a random non-identity cyclic relabelling: target = (label + s) mod K.

    One shift s, uniform in 1..K-1, is drawn per image, so every valid pixel
    gets a wrong class and pixels of one class share their target (a
    consistent wrong scene); ignored pixels stay -1.

    Args:
      rng: PRNG key.
      labels: [batch, height, width] label maps.
      num_classes: K >= 2.

    Returns:
      [batch, height, width] int32 targets.
    """
    shift = jax.random.randint(rng, labels.shape[:1], 1, num_classes)
    shift = shift.reshape((-1,) + (1,) * (labels.ndim - 1))
    targets = (labels + shift) % num_classes
    return jnp.where(labels_lib.valid(labels), targets, labels).astype(jnp.int32)

  def metric_sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """{'confusion': [K, K] counts over the real examples' valid pixels}."""
    weights = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (labels.ndim - 1)), labels.shape)
    pred = jnp.argmax(logits, axis=-1)
    return {"confusion": confusion_matrix(pred, labels, self.num_classes, weights),
            "images": jnp.sum(mask > 0, dtype=jnp.int32)}

  def accuracy_from_sums(self, sums: dict[str, jax.Array]) -> jax.Array:
    """Global pixel accuracy from (possibly device) sums, jit-compatible."""
    return jnp.trace(sums["confusion"]) / jnp.maximum(jnp.sum(sums["confusion"]), 1)

  def metric_values(self, sums: dict[str, Any]) -> dict[str, Any]:
    """{'pixel_accuracy', 'miou', 'iou' (per class, None where undefined), 'num_examples', 'num_pixels'}."""
    confusion = np.asarray(sums["confusion"], np.float64)
    total = confusion.sum()
    iou, present = iou_from_confusion(confusion)
    return {
        "pixel_accuracy": float(np.trace(confusion) / max(total, 1.0)),
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "iou": [float(v) if p else None for v, p in zip(iou, present)],
        "num_examples": int(sums["images"]),
        "num_pixels": int(total),
    }
