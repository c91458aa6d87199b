"""Black-box transfer matrix against NumPy."""

import numpy as np

from advjax.analysis import transfer
from tests.analysis import linear_models as lm


def test_transfer_matrix_matches_numpy():
  models = [lm.model(s) for s in (4, 5, 6)]
  n = 7
  x_adv_sets = np.stack([lm.images(20, n), lm.images(21, n)])   # 2 source epochs
  y = np.array([0, 1, 2, 0, 1, 2, 0])
  acc = transfer.transfer_matrix([m[0] for m in models], x_adv_sets, y, batch_size=3)
  ref = np.array([[np.mean(np.argmax(lm.np_logits(w, b, xs), -1) == y) for _, w, b in models]
                  for xs in x_adv_sets])
  assert acc.shape == (2, 3)
  np.testing.assert_allclose(acc, ref)
  assert len(np.unique(ref)) > 1
