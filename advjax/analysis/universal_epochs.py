"""Accuracy under per-epoch universal perturbations (sec. 3.2, figures 3-4, appendices D-E).

A universal perturbation Xi (one [H, W, C] image, ||Xi||_inf <= eps) is added
to every input. The paper makes one per epoch of adversarial training with the
universal basic iterative method of appendix D,

  Xi^(0) = 0,  Xi^(n+1) = Clip_eps{Xi^(n) + alpha/K sum_{k=1..K} sgn(grad^{D_k}(Xi^(n)))},

eps = 10, alpha = 2.5, K = 10 mini-batches of m = 128 per update, 200
iterations (`advjax.attacks.universal.appendix_d_config`; this module does not
make perturbations, it evaluates them). Figure 3 shows the accuracy of each
epoch's model on held-out data with its own epoch's Xi added (the
"respective epoch" line, `universal_accuracy`), and of every model under the
perturbations of epochs 0, 5 and 51 (rows of `universal_accuracy_matrix`).
Figures 4, 13, 19 and 24 show the perturbations amplified for readability
(`advjax.viz.amplify`).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.cpu import compilation
from advjax.analysis import epochs as epochs_lib
from advjax.errors import DataError

@functools.partial(compilation.jit, static_argnames=("logits_fn",))
def _correct_under(logits_fn, perturbations, x, y):
  def one(xi):
    return jnp.argmax(logits_fn(jnp.clip(x + xi[None], 0.0, 1.0)), axis=-1) == y
  return lax.map(one, perturbations).T


def _check(perturbations, x):
  if np.ndim(perturbations) != 4 or np.shape(perturbations)[1:] != np.shape(x)[1:]:
    raise DataError(f"perturbations must be [T, H, W, C] matching x {np.shape(x)[1:]}, "
                    f"got shape {np.shape(perturbations)}")


def universal_accuracy_matrix(logits_fns: Sequence[epochs_lib.LogitsFn], perturbations, x, y,
                              batch_size: int | None = None) -> np.ndarray:
  """Accuracy of every model under every universal perturbation.

  Args:
    logits_fns: M closures (models theta_0 .. theta_{M-1}).
    perturbations: [T, H, W, C]; row t made for the model of epoch t.
    x: [N, H, W, C] held-out images in [0, 1].
    y: [N] labels.
    batch_size: examples per jitted call.

  Returns:
    [T, M] float64: entry (t, m) is the accuracy of model m on clip(x + Xi_t, 0, 1).
  """
  epochs_lib.check_epochs(logits_fns)
  _check(perturbations, x)
  xi = jnp.asarray(perturbations)
  rows = []
  for fn in logits_fns:
    correct = epochs_lib.map_batched(
        lambda xb, yb, fn=fn: _correct_under(fn, xi, xb, yb), [x, y], batch_size)
    rows.append(correct.mean(axis=0))
  return np.stack(rows, axis=1)


def universal_accuracy(logits_fns: Sequence[epochs_lib.LogitsFn], perturbations, x, y,
                       batch_size: int | None = None) -> np.ndarray:
  """Accuracy of each epoch's model under its own epoch's universal perturbation (figure 3).

  Args:
    logits_fns: T closures.
    perturbations: [T, H, W, C], perturbation t made for model t.
    x: [N, H, W, C] held-out images in [0, 1].
    y: [N] labels.
    batch_size: examples per jitted call.

  Returns:
    [T] float64, the diagonal of `universal_accuracy_matrix` (computed alone).
  """
  epochs_lib.check_epochs(logits_fns, np.shape(perturbations)[0], "perturbations")
  _check(perturbations, x)
  out = []
  for t, fn in enumerate(logits_fns):
    xi = jnp.asarray(perturbations[t:t + 1])
    correct = epochs_lib.map_batched(
        lambda xb, yb, fn=fn, xi=xi: _correct_under(fn, xi, xb, yb), [x, y], batch_size)
    out.append(correct[:, 0].mean())
  return np.asarray(out)
