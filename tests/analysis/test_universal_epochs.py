"""Accuracy under per-epoch universal perturbations and the amplified images."""

import numpy as np
import pytest

from advjax import viz
from advjax.analysis import universal_epochs
from advjax.errors import DataError
from tests.analysis import linear_models as lm


def _np_accuracy(w, b, x, y, xi):
  return np.mean(np.argmax(lm.np_logits(w, b, np.clip(x + xi, 0, 1)), -1) == y)


def test_accuracy_matrix_and_diagonal_match_numpy():
  models = [lm.model(s) for s in (15, 16, 17)]
  x = lm.images(50, 11)
  y = np.argmax(lm.np_logits(models[0][1], models[0][2], x), -1)
  xi = np.random.default_rng(1).uniform(-0.25, 0.25, (3,) + lm.SHAPE).astype(np.float32)
  fns = [m[0] for m in models]
  mat = universal_epochs.universal_accuracy_matrix(fns, xi, x, y, batch_size=4)
  ref = np.array([[_np_accuracy(w, b, x, y, xi[t]) for _, w, b in models] for t in range(3)])
  assert mat.shape == (3, 3)
  np.testing.assert_allclose(mat, ref)
  assert len(np.unique(ref)) > 2
  diag = universal_epochs.universal_accuracy(fns, xi, x, y, batch_size=4)
  np.testing.assert_allclose(diag, np.diag(ref))
  with pytest.raises(DataError):
    universal_epochs.universal_accuracy(fns, xi[:2], x, y)


def test_amplify():
  xi = np.zeros((2,) + lm.SHAPE, np.float32)
  xi[0, 0, 0, 0] = -0.04
  xi[0, 1, 2, 0] = 0.02
  xi[1, 3, 3, 0] = 0.01
  out = viz.amplify(xi)
  np.testing.assert_allclose(out[0], 0.5 + xi[0] / (2 * 0.04), rtol=1e-6)
  np.testing.assert_allclose(out[1], 0.5 + xi[1] / (2 * 0.01), rtol=1e-6)
  assert out[0, 0, 0, 0] == pytest.approx(0.0) and out[1, 3, 3, 0] == pytest.approx(1.0)
  np.testing.assert_allclose(viz.amplify(np.zeros(lm.SHAPE)), 0.5)
  scaled = viz.amplify(xi, factor=10.0)
  np.testing.assert_allclose(scaled, np.clip(0.5 + 10 * xi, 0, 1), rtol=1e-6)
