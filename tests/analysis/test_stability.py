"""Temporal stability profiles, MaxMin and MinMax against NumPy references."""

import numpy as np
import pytest

from advjax.analysis import stability
from advjax.errors import DataError
from tests.analysis import linear_models as lm


def test_hand_case_fixes_which_index_is_which():
  # Rows t1 (perturbation epoch), columns t2 (model epoch).
  p = np.array([[0.1, 0.9],
                [0.2, 0.3]])
  # MaxMin: row maxima 0.9, 0.3 -> min 0.3. MinMax: column minima 0.1, 0.3 -> max 0.3.
  assert float(stability.max_min(p)) == pytest.approx(0.3)
  assert float(stability.min_max(p)) == pytest.approx(0.3)
  # The transpose has other values, so swapped axes would be caught.
  assert float(stability.max_min(p.T)) == pytest.approx(0.2)
  assert float(stability.min_max(p.T)) == pytest.approx(0.2)
  oscillating = np.array([[0.95, 0.05],
                          [0.05, 0.95]])
  assert float(stability.max_min(oscillating)) == pytest.approx(0.95)
  assert float(stability.min_max(oscillating)) == pytest.approx(0.05)


def test_random_profiles_match_numpy_and_obey_minimax():
  p = np.random.default_rng(0).uniform(size=(200, 5, 5)).astype(np.float32)
  xm = np.asarray(stability.max_min(p))
  mm = np.asarray(stability.min_max(p))
  np.testing.assert_allclose(xm, p.max(axis=2).min(axis=1))
  np.testing.assert_allclose(mm, p.min(axis=1).max(axis=1))
  assert np.all(xm >= mm)
  assert np.any(xm > mm)


def test_profiles_equal_numpy_true_class_probabilities():
  fns, ws, bs = zip(*[lm.model(s) for s in (1, 2, 3)])
  n = 5
  x_adv_sets = np.stack([lm.images(10 + t, n) for t in range(3)])
  y = np.array([0, 1, 2, 1, 0])
  profiles = stability.stability_profiles(list(fns), x_adv_sets, y, batch_size=2)
  ref = np.zeros((n, 3, 3))
  for t1 in range(3):
    for t2 in range(3):
      probs = lm.np_softmax(lm.np_logits(ws[t2], bs[t2], x_adv_sets[t1]))
      ref[:, t1, t2] = probs[np.arange(n), y]
  assert profiles.shape == (n, 3, 3)
  np.testing.assert_allclose(profiles, ref, rtol=1e-4, atol=1e-6)


def test_scatter_categories():
  robust = np.array([[0.9, 0.8], [0.7, 0.9]])       # MaxMin 0.9, MinMax 0.8
  stable = np.array([[0.1, 0.2], [0.9, 0.9]])       # MaxMin 0.2
  oscillating = np.array([[0.9, 0.1], [0.1, 0.9]])  # MaxMin 0.9, MinMax 0.1
  s = stability.scatter_data(np.stack([robust, stable, oscillating]))
  np.testing.assert_allclose(s.min_max, [0.8, 0.2, 0.1], rtol=1e-6)
  np.testing.assert_allclose(s.max_min, [0.9, 0.2, 0.9], rtol=1e-6)
  assert [stability.CATEGORIES[c] for c in s.category] == ["robust", "stable", "oscillating"]


def test_profiles_reject_mismatched_epochs():
  fns = [lm.model(1)[0], lm.model(2)[0]]
  with pytest.raises(DataError):
    stability.stability_profiles(fns, np.zeros((3, 2) + lm.SHAPE, np.float32), np.zeros(2, int))
  with pytest.raises(DataError):
    stability.max_min(np.zeros((2, 3)))
