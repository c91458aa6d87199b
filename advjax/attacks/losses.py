"""Per-example losses, the one place that fixes the sign convention.

Every function here maps `(logits, labels)` to one value per example where a
larger value means a stronger attack (and a worse model). Training minimises
their mean; attacks maximise them. Labels may be class indices `[batch]` or
dense label maps `[batch, height, width]` for segmentation; in the dense case
the per-pixel values are averaged over the pixels whose label is not negative
(negative labels mark pixels to ignore), so every loss still returns `[batch]`.

Attack configs name their loss by string; `get_loss(name, targeted, **params)`
resolves it. Untargeted losses take true (or predicted, see `predicted_labels`)
classes; targeted ones take target classes and grow as the target becomes
likelier. `clipped_cross_entropy` is the loss thresholding of shared
adversarial training (sec. 4.3, kappa = -log 0.2); `margin` is the
Carlini-Wagner objective max_{j != y} z_j - z_y.
"""

import functools
import math

import jax
import jax.numpy as jnp

from advjax.errors import ConfigError
from advjax.registry import Registry
from advjax.tasks import labels as labels_lib

# The cross-entropy of every loss and objective; defined with the label rules in tasks.
cross_entropy = labels_lib.cross_entropy


def clipped_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    kappa: float = -math.log(0.2),
    label_smoothing: float = 0.0,
) -> jax.Array:
  """Loss-thresholded cross-entropy min(CE, kappa) (shared adversarial training, sec. 4.3).

  The default kappa = -log 0.2 stops rewarding the adversary once the true
  class has probability below 0.2, so a shared perturbation is not pulled
  towards a few highly confident mistakes; above kappa the gradient is zero.

  Args:
    logits: [batch, ..., classes].
    labels: [batch, ...] integer classes; negative entries are ignored.
    kappa: threshold on the per-position cross-entropy.
    label_smoothing: weight of the uniform distribution in the targets.

  Returns:
    [batch] float32 loss per example.
  """
  per_position = labels_lib.cross_entropy_per_position(logits, labels, label_smoothing)
  return labels_lib.mean_over_valid(jnp.minimum(per_position, kappa), labels)


def targeted_cross_entropy(
    logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """-CE(logits, targets): grows as the target class becomes likelier.

  Args:
    logits: [batch, ..., classes].
    targets: [batch, ...] integer target classes.
    label_smoothing: weight of the uniform distribution in the targets.

  Returns:
    [batch] float32 loss per example.
  """
  return -cross_entropy(logits, targets, label_smoothing)


def _best_other(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z_y, max_{j != y} z_j) per position."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(jnp.maximum(labels, 0), logits.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return z_y, z_other


def margin(logits: jax.Array, labels: jax.Array, confidence: float | None = None) -> jax.Array:
  """Carlini-Wagner margin max_{j != y} z_j - z_y, positive iff misclassified.

  Args:
    logits: [batch, ..., classes].
    labels: [batch, ...] integer true classes; negative entries are ignored.
    confidence: if given, the margin is capped at this value (CW's kappa): the
      adversary gains nothing from a misclassification more confident than it.

  Returns:
    [batch] float32 margin per example.
  """
  z_y, z_other = _best_other(logits, labels)
  per_position = z_other - z_y
  if confidence is not None:
    per_position = jnp.minimum(per_position, confidence)
  return labels_lib.mean_over_valid(per_position, labels)


def targeted_margin(
    logits: jax.Array, targets: jax.Array, confidence: float | None = None
) -> jax.Array:
  """Targeted CW margin z_t - max_{j != t} z_j, positive iff the target wins.

  Args:
    logits: [batch, ..., classes].
    targets: [batch, ...] integer target classes.
    confidence: optional cap, as in `margin`.

  Returns:
    [batch] float32 margin per example.
  """
  z_t, z_other = _best_other(logits, targets)
  per_position = z_t - z_other
  if confidence is not None:
    per_position = jnp.minimum(per_position, confidence)
  return labels_lib.mean_over_valid(per_position, targets)


def predicted_labels(logits: jax.Array) -> jax.Array:
  """Argmax classes of clean logits, used instead of true labels against label leaking.

  Attacks call this once on the clean input (universality paper, sec. 3.1) and
  keep the result fixed over the iterations.

  Args:
    logits: [batch, ..., classes].

  Returns:
    [batch, ...] int32 predicted classes, no gradient.
  """
  return jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)


# name -> (untargeted loss, targeted loss or None). Every entry is called as
# fn(logits, labels, **params) with the params that `get_loss` selects for it.
LOSSES = Registry("loss", {
    "cross_entropy": (cross_entropy, targeted_cross_entropy),
    "clipped_cross_entropy": (clipped_cross_entropy, None),
    "margin": (margin, targeted_margin),
})
_PARAMS = {
    cross_entropy: ("label_smoothing",),
    targeted_cross_entropy: ("label_smoothing",),
    clipped_cross_entropy: ("kappa", "label_smoothing"),
    margin: ("confidence",),
    targeted_margin: ("confidence",),
}
LOSS_NAMES = tuple(sorted(LOSSES))


def get_loss(name: str, targeted: bool = False, **params):
  """Resolves a loss name from a config to `(logits, labels) -> [batch]`.

  Args:
    name: one of `LOSS_NAMES`.
    targeted: if True, the targeted variant; `labels` are then target classes.
    **params: any of label_smoothing, kappa, confidence; those the loss does
      not take are ignored, so a config can carry all of them.

  Returns:
    A per-example loss function where larger means a stronger attack.

  Raises:
    ConfigError: unknown name, or no targeted variant exists.
  """
  fn = LOSSES[name][1 if targeted else 0]
  if fn is None:
    raise ConfigError(f"loss {name!r} has no targeted variant")
  kwargs = {k: params[k] for k in _PARAMS[fn] if k in params}
  return functools.partial(fn, **kwargs)
