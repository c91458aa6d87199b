"""Per-example attack losses: sign convention, thresholding, targets, registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import losses
from advjax.errors import ConfigError

LOGITS = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
LABELS = jnp.array([0, 0])


def test_cross_entropy_larger_when_wrong():
  ce = losses.cross_entropy(LOGITS, LABELS)
  assert ce.shape == (2,) and ce[1] > ce[0]


def test_clipped_cross_entropy_caps_and_kills_gradient():
  ce = losses.cross_entropy(LOGITS, LABELS)
  clipped = losses.clipped_cross_entropy(LOGITS, LABELS)
  kappa = -math.log(0.2)
  np.testing.assert_allclose(clipped, jnp.minimum(ce, kappa), rtol=1e-6)
  assert ce[1] > kappa
  grad = jax.grad(lambda z: losses.clipped_cross_entropy(z, LABELS).sum())(LOGITS)
  assert np.all(np.asarray(grad[1]) == 0.0) and np.any(np.asarray(grad[0]) != 0.0)


def test_margin_positive_iff_misclassified():
  m = losses.margin(LOGITS, LABELS)
  np.testing.assert_allclose(m, [-2.0, 2.0])
  np.testing.assert_allclose(losses.margin(LOGITS, LABELS, confidence=0.5), [-2.0, 0.5])
  np.testing.assert_allclose(losses.targeted_margin(LOGITS, jnp.array([1, 1])), [-2.0, 1.0])


def test_targeted_cross_entropy_grows_with_target_probability():
  t = jnp.array([1, 1])
  np.testing.assert_allclose(losses.targeted_cross_entropy(LOGITS, t),
                             -losses.cross_entropy(LOGITS, t))
  grad = jax.grad(lambda z: losses.targeted_cross_entropy(z, t).sum())(LOGITS)
  assert np.all(np.asarray(grad[:, 1]) > 0)


def test_predicted_labels_and_label_smoothing():
  np.testing.assert_array_equal(losses.predicted_labels(LOGITS), [0, 1])
  smooth = losses.get_loss("cross_entropy", label_smoothing=0.1)(LOGITS, LABELS)
  assert not np.allclose(smooth, losses.cross_entropy(LOGITS, LABELS))


def test_registry():
  assert losses.get_loss("margin", targeted=True)(LOGITS, jnp.array([1, 1])).shape == (2,)
  with pytest.raises(ConfigError, match="unknown loss 'nope'"):
    losses.get_loss("nope")
  with pytest.raises(ConfigError, match="no targeted variant"):
    losses.get_loss("clipped_cross_entropy", targeted=True)
