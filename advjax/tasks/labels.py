"""Per-example reductions over labels of any shape: the arithmetic every task shares.

Labels are class indices `[batch]` or dense maps `[batch, height, width]` where
a negative entry marks a position to ignore. A per-position quantity
`[batch, ...]` becomes one value per example by averaging over the valid
positions (`mean_over_valid`); for class labels this is the identity. The
cross-entropy and correctness here are the ones every loss, objective and
metric in advjax reduces this way, so that a dense label map is never scored
by a different rule in two places.
"""

import jax
import jax.numpy as jnp
import numpy as np


def valid(labels: jax.Array) -> jax.Array:
  """Boolean mask of the positions that carry a label (label >= 0)."""
  return labels >= 0


def ignore_class(labels: jax.Array, cls: int | None) -> jax.Array:
  """`labels` with every entry equal to `cls` marked ignored (-1); unchanged for None or a negative cls.

  E.g. the background of the digit canvases (class 0, about 90% of the
  pixels), so that a rate counts the digits' pixels only.
  """
  if cls is None or cls < 0:
    return labels
  return jnp.where(labels == cls, -1, labels)


def hide_class(label_maps: np.ndarray, cls: int) -> np.ndarray:
  """Metzen et al.'s dynamic target (2017): label maps with class `cls` hidden behind its neighbours.

  Every pixel of class `cls` takes the label of the nearest (Euclidean)
  pixel of another class, so a universal perturbation that reaches this
  target removes the class (their pedestrians) while leaving the rest of
  the scene as it was. Ignored pixels (< 0) stay ignored and are never a
  neighbour; where an image has no pixel of another class, its `cls` pixels
  become ignored (there is nothing to hide them behind). Among equally near
  pixels one is taken (scipy's exact distance transform decides). Host-side:
  NumPy in, NumPy out.

  Args:
    label_maps: int [H, W] or [B, H, W].
    cls: the class to hide.

  Returns:
    The target maps, same shape and dtype.
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  maps = np.asarray(label_maps)
  out = maps.copy()
  flat_in, flat_out = maps.reshape((-1,) + maps.shape[-2:]), out.reshape((-1,) + maps.shape[-2:])
  for m, o in zip(flat_in, flat_out):
    hidden = m == cls
    if not hidden.any():
      continue
    sources = (m >= 0) & ~hidden
    if not sources.any():
      o[hidden] = -1
      continue
    # Distance from every non-source pixel to the nearest source, and that source's index.
    _, (rows, cols) = ndimage.distance_transform_edt(~sources, return_indices=True)
    o[hidden] = m[rows[hidden], cols[hidden]]
  return out


def mean_over_valid(per_position: jax.Array, labels: jax.Array) -> jax.Array:
  """Averages `[batch, ...]` values over the non-batch axes, skipping ignored labels.

  Args:
    per_position: [batch] or [batch, ...] values, one per labelled position.
    labels: integer labels of the same shape; negative entries are ignored.

  Returns:
    [batch] means; an example without a valid position gets 0.
  """
  if per_position.ndim == 1:
    return per_position
  weights = valid(labels).astype(per_position.dtype)
  axes = tuple(range(1, per_position.ndim))
  total = jnp.sum(per_position * weights, axis=axes)
  return total / jnp.maximum(jnp.sum(weights, axis=axes), 1.0)


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """One-hot targets mixed with the uniform distribution: (1 - a) * onehot + a / K."""
  onehot = jax.nn.one_hot(jnp.maximum(labels, 0), num_classes)
  return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy_per_position(logits: jax.Array, labels: jax.Array,
                               label_smoothing: float = 0.0) -> jax.Array:
  """[batch, ...] softmax cross-entropy of every position, in float32 (ignored positions included)."""
  logits = logits.astype(jnp.float32)
  targets = soft_targets(labels, logits.shape[-1], label_smoothing)
  return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy against (optionally label-smoothed) targets.

  Args:
    logits: [batch, ..., classes].
    labels: [batch, ...] integer classes; negative entries are ignored.
    label_smoothing: weight `a` of the uniform distribution in the targets.

  Returns:
    [batch] float32 loss per example.
  """
  return mean_over_valid(cross_entropy_per_position(logits, labels, label_smoothing), labels)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[batch] fraction of valid positions whose argmax is the label (0/1 for class labels)."""
  hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return mean_over_valid(hits, labels)
