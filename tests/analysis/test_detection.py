"""Detector, its train step, detection accuracy and matrix, and the detector objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from advjax.analysis import detection
from tests.analysis import linear_models as lm


def _threshold_detector(threshold):
  """Says 'adversarial' when the mean pixel exceeds `threshold`."""
  def logits_fn(x):
    m = jnp.mean(x.reshape(x.shape[0], -1), axis=1)
    return jnp.stack([jnp.zeros_like(m), 20.0 * (m - threshold)], axis=1)
  return logits_fn


def _np_says_adversarial(x, threshold):
  return x.reshape(len(x), -1).mean(1) > threshold


def test_detector_accuracy_and_matrix_match_numpy():
  rng = np.random.default_rng(0)
  clean = rng.uniform(0.0, 0.7, (9,) + lm.SHAPE).astype(np.float32)
  adv_sets = np.stack([rng.uniform(lo, lo + 0.6, (6,) + lm.SHAPE).astype(np.float32)
                       for lo in (0.1, 0.25, 0.4)])
  thresholds = (0.3, 0.45)
  dets = [_threshold_detector(t) for t in thresholds]
  ref = np.array([[(np.sum(~_np_says_adversarial(clean, t)) + np.sum(_np_says_adversarial(a, t)))
                   / (9 + 6) for a in adv_sets] for t in thresholds])
  assert len(np.unique(ref)) > 2
  acc = detection.detector_accuracy(dets[0], clean, adv_sets[1], batch_size=4)
  assert acc == pytest.approx(ref[0, 1])
  mat = detection.detection_matrix(dets, clean, adv_sets, batch_size=4)
  assert mat.shape == (2, 3)
  np.testing.assert_allclose(mat, ref)


def test_train_step_labels_clean_0_adversarial_1():
  rng = np.random.default_rng(1)
  w0 = (0.5 * rng.standard_normal((16, 2))).astype(np.float32)
  b0 = np.array([0.1, -0.2], np.float32)

  def apply_fn(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["params"]["w"] + variables["params"]["b"]

  lr = 0.1
  state = train_state.TrainState.create(apply_fn=apply_fn, params={"w": jnp.asarray(w0),
                                                                   "b": jnp.asarray(b0)},
                                        tx=optax.sgd(lr))
  clean, adv = lm.images(70, 3), lm.images(71, 5)
  new_state, metrics = detection.detector_train_step(state, clean, adv)
  x = np.concatenate([clean, adv]).reshape(8, -1).astype(np.float64)
  labels = np.array([0] * 3 + [1] * 5)
  z = x @ w0 + b0
  p = lm.np_softmax(z)
  assert float(metrics["loss"]) == pytest.approx(lm.np_cross_entropy(z, labels).mean(), rel=1e-5)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(np.argmax(z, 1) == labels))
  dz = (p - np.eye(2)[labels]) / 8
  np.testing.assert_allclose(new_state.params["w"], w0 - lr * x.T @ dz, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_state.params["b"], b0 - lr * dz.sum(0), rtol=1e-4, atol=1e-6)


def test_tiny_detector_learns_a_fixed_pattern():
  model = detection.TinyDetector()
  assert jax.eval_shape(lambda x: detection.MetzenDetector().init_with_output(
      jax.random.key(0), x)[0], jnp.zeros((3, 28, 28, 1))).shape == (3, 2)
  rng = np.random.default_rng(2)
  checker = (np.indices((8, 8)).sum(0) % 2 * 2 - 1)[..., None].astype(np.float32)
  clean = rng.uniform(0.2, 0.8, (48, 8, 8, 1)).astype(np.float32)
  adv = np.clip(clean + 0.15 * checker, 0, 1)
  state = detection.create_detector_state(jax.random.key(0), model, (8, 8, 1), optax.adam(2e-2))
  state, history = detection.train_detector(state, clean[:32], adv[:32], jax.random.key(1),
                                            num_epochs=12, batch_size=16)
  assert history[-1]["loss"] < history[0]["loss"]
  fn = detection.detector_logits_fn(state)
  assert detection.detector_accuracy(fn, clean[32:], adv[32:]) >= 0.9


def test_detector_losses_match_numpy():
  cls_fn, cw, cb = lm.model(19)
  det_fn, dw, db = lm.model(20)
  # A 2-logit detector: the first two logits of a linear model.
  det2 = lambda x: det_fn(x)[:, :2]
  x = lm.images(72, 5)
  y = np.array([0, 1, 2, 0, 1])
  dz = lm.np_logits(dw, db, x)[:, :2]
  log_p = np.log(lm.np_softmax(dz))
  ce = lm.np_cross_entropy(lm.np_logits(cw, cb, x), y)
  act = detection.detector_activation_loss(det2)(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(act, log_p[:, detection.ADVERSARIAL], rtol=1e-4, atol=1e-5)
  ev = detection.detector_evasion_loss(cls_fn, det2, 0.5)(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(ev, log_p[:, detection.CLEAN] + 0.5 * ce, rtol=1e-4, atol=1e-4)
  xi = np.full(lm.SHAPE, 0.1, np.float32)
  mask = np.array([1, 1, 0, 1, 0], np.float32)
  obj = detection.universal_objective(detection.detector_activation_loss(det2), jnp.asarray(xi),
                                      jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
  log_p_xi = np.log(lm.np_softmax(lm.np_logits(dw, db, np.clip(x + xi, 0, 1))[:, :2]))
  assert float(obj) == pytest.approx(np.sum(log_p_xi[:, 1] * mask) / 3, rel=1e-4)
  prob = detection.mean_adversarial_probability(det2, x, xi, batch_size=2)
  assert prob == pytest.approx(np.exp(log_p_xi[:, 1]).mean(), rel=1e-4)


def test_ascent_on_activation_loss_raises_adversarial_probability():
  linear = lm.model(21, scale=0.5)[0]
  det_fn = lambda x: linear(x)[:, :2]
  x = jnp.asarray(lm.images(73, 16))
  y = jnp.zeros(16, jnp.int32)
  loss = detection.detector_activation_loss(det_fn)
  grad = jax.jit(jax.grad(lambda xi: detection.universal_objective(loss, xi, x, y)))
  xi = jnp.zeros(lm.SHAPE)
  before = detection.mean_adversarial_probability(det_fn, x, xi)
  for _ in range(5):
    xi = jnp.clip(xi + 2.5 / 255 * jnp.sign(grad(xi)), -10 / 255, 10 / 255)
  assert detection.mean_adversarial_probability(det_fn, x, xi) > before + 0.01
