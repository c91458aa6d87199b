"""Temporal stability profiles, MaxMin and MinMax (sec. 3.1, figure 1, appendix B).

After t1 epochs of adversarial training the adversary makes a perturbation
xi_{t1} of a test input x against theta_{t1}; after t2 epochs the model
theta_{t2} assigns the true class y the probability

  P_{t1, t2}(x) = p(y | x + xi_{t1}; theta_{t2}),

and the T x T matrix P(x) is the input's temporal stability profile (rows t1:
the epoch the perturbation was made for; columns t2: the evaluated model).
The paper summarises a profile by

  MaxMin = min_{t1} max_{t2} P_{t1, t2}   (max over each row, then min of those)
  MinMax = max_{t2} min_{t1} P_{t1, t2}   (min over each column, then max of those)

A small MaxMin means some perturbation fools every model of the run: a
*stable* perturbation. A large MinMax means one model classifies the input
correctly under every perturbation of the run. MaxMin large and MinMax small
is the oscillation failure: each perturbation is defeated at some epoch, but
never all at once. MaxMin >= MinMax always (the minimax inequality: for any
t1, t2, max_{t2'} P_{t1, t2'} >= P_{t1, t2} >= min_{t1'} P_{t1', t2}).

Appendix B plots MaxMin against MinMax for 256 test inputs (figure 10, MinMax
on the x axis, MaxMin on the y axis): the upper right holds inputs made
robust, the lower left stable perturbations, the upper left oscillations.
`scatter_data` returns those coordinates and the corner of each point.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advjax.analysis import epochs as epochs_lib
from advjax.errors import DataError

# Categories of `scatter_data`, indexed by its `category` output.
CATEGORIES = ("robust", "stable", "oscillating")


def stability_profiles(logits_fns: Sequence[epochs_lib.LogitsFn], x_adv_sets, y,
                       batch_size: int | None = None) -> np.ndarray:
  """P_{t1, t2}(x) = p(y | x + xi_{t1}; theta_{t2}) for every input and epoch pair.

  Args:
    logits_fns: T closures, theta_0 .. theta_{T-1}.
    x_adv_sets: [T, N, H, W, C]; x_adv_sets[t1] = x + xi_{t1}, made against
      theta_{t1} (see `epochs.per_epoch_adversarial`).
    y: [N] true labels.
    batch_size: examples per jitted call.

  Returns:
    profiles [N, T, T] float32, profiles[n, t1, t2] = P_{t1, t2}(x_n).

  Raises:
    DataError: the number of sets differs from the number of models.
  """
  epochs_lib.check_epochs(logits_fns, np.shape(x_adv_sets)[0], "x_adv_sets")
  probs, _ = epochs_lib.cross_evaluate(logits_fns, x_adv_sets, y, batch_size)
  return np.transpose(probs, (2, 0, 1))


def _check_square(profiles):
  if profiles.ndim < 2 or profiles.shape[-1] != profiles.shape[-2]:
    raise DataError(f"profiles must be [..., T, T], got shape {profiles.shape}")


def max_min(profiles: jax.Array) -> jax.Array:
  """MaxMin = min_{t1} max_{t2} P_{t1, t2} (sec. 3.1).

  Args:
    profiles: [..., T, T] with the perturbation epoch t1 on the second-to-last
      axis and the model epoch t2 on the last.

  Returns:
    [...] MaxMin per profile; small means a stable perturbation exists.
  """
  profiles = jnp.asarray(profiles)
  _check_square(profiles)
  return jnp.min(jnp.max(profiles, axis=-1), axis=-1)


def min_max(profiles: jax.Array) -> jax.Array:
  """MinMax = max_{t2} min_{t1} P_{t1, t2} (sec. 3.1).

  Args:
    profiles: [..., T, T], axes (t1, t2) as in `max_min`.

  Returns:
    [...] MinMax per profile; large means one model resists every perturbation.
  """
  profiles = jnp.asarray(profiles)
  _check_square(profiles)
  return jnp.max(jnp.min(profiles, axis=-2), axis=-1)


class StabilityScatter(NamedTuple):
  """Points of the MaxMin-versus-MinMax scatter plot (appendix B, figure 10).

  Attributes:
    min_max: [N] x coordinates.
    max_min: [N] y coordinates.
    category: [N] int index into `CATEGORIES`: 0 'robust' (MinMax >=
      threshold: one model resists every perturbation), 1 'stable' (MaxMin <
      threshold: a perturbation fools every model), 2 'oscillating' (MaxMin >=
      threshold > MinMax).
  """
  min_max: np.ndarray
  max_min: np.ndarray
  category: np.ndarray


def scatter_data(profiles, threshold: float = 0.5) -> StabilityScatter:
  """The scatter plot data of appendix B from a stack of profiles.

  Args:
    profiles: [N, T, T] from `stability_profiles`.
    threshold: true-class probability separating low from high (0.5 by
      default; the paper reads the corners of the plot by eye).

  Returns:
    `StabilityScatter` of NumPy arrays.
  """
  mm = np.asarray(min_max(profiles))
  xm = np.asarray(max_min(profiles))
  category = np.where(mm >= threshold, 0, np.where(xm < threshold, 1, 2)).astype(np.int32)
  return StabilityScatter(min_max=mm, max_min=xm, category=category)
