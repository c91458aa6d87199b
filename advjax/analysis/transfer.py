"""Black-box transfer between the epochs of adversarial training (appendix A, figure 9).

Adversarial examples made for the model of epoch i (the source) are shown to
the model of every epoch j (the target). The diagonal i = j is the white-box
attack ("respective epoch"); off the diagonal it is a black-box attack that
relies on transferability. The paper generates them for the source epochs 0,
5, 15, 51 and 251 on 256 inputs and plots the error rate 1 - accuracy per
target epoch; it finds black-box attacks no stronger than white-box ones, and
examples of epochs 5 and 15 still fooling all later models on 20% or more of
the test inputs.
"""

from collections.abc import Sequence

import numpy as np

from advjax.analysis import epochs as epochs_lib


def transfer_matrix(logits_fns: Sequence[epochs_lib.LogitsFn], x_adv_sets, y,
                    batch_size: int | None = None) -> np.ndarray:
  """Accuracy of the model of epoch j on the adversarial examples of epoch i.

  Args:
    logits_fns: T target models, one per epoch.
    x_adv_sets: [S, N, H, W, C] adversarial examples of S source epochs (S = T
      for all epochs, from `epochs.per_epoch_adversarial`; any subset of
      sources also works).
    y: [N] true labels.
    batch_size: examples per jitted call.

  Returns:
    [S, T] float64: entry (i, j) is the accuracy of model j on x_adv_sets[i];
    1 - it is figure 9's error rate.
  """
  _, correct = epochs_lib.cross_evaluate(logits_fns, x_adv_sets, y, batch_size)
  return correct.mean(axis=2)
