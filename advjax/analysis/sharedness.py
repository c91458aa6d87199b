"""Sharedness of perturbations (appendix C, figure 11) and its link to stability (figure 2).

A perturbation xi_i made for input x_i is *shared* if it also fools the
classifier on many other inputs and *singular* if it leaves the prediction
unchanged on nearly all of them (the paper's line: 2% of the other inputs).

Sharedness ratio (appendix C). Perturbations of P inputs are transferred to N
other inputs under the same model theta_t; xi_i is *effective* on x_j when it
changes the prediction from correct to incorrect:

  E_{ij} = [argmax f(x_j; theta_t) = y_j] and [argmax f(clip(x_j + xi_i, 0, 1); theta_t) != y_j]

and the sharedness of xi_i is the fraction of the other inputs on which it is
effective, s_i = (1 / |J_i|) sum_{j in J_i} E_{ij}, J_i all inputs except x_i
itself when it is among them (the paper transfers 1024 test perturbations to
5000 *other* test inputs, so J_i is all N). `effective_matrix` computes E
[P, N] in one jitted call: a `lax.map` over chunks of `chunk_size`
perturbations, each chunk evaluated on all N inputs at once (or on chunks of
`input_chunk_size` inputs), so memory holds chunk_size x N images, never
P x N. The input axis may be sharded over devices: everything is elementwise
along it. Appendix C reports per epoch the mean, the minimum and the maximum
of s_i (6.3% / 3.3% at epoch 0, 0.5% on average after 251 epochs).

Cost change and its correlation (sec. 3.1, figure 2). With J the
cross-entropy, the cost change of a perturbation is

  J^Delta(xi, theta, x, y) = J(theta, x + xi, y) - J(theta, x, y).

For perturbations xi_{i, t=0} of test inputs x_i made against theta_0:

  J^Delta_current,train(xi_i) = 1/N sum_j J^Delta(xi_i, theta_0, x_j, y_j)
      over N training inputs x_j (how much xi_i raises the cost of *other*
      inputs now: its sharedness);
  J^Delta_future,test(xi_i)   = 1/|T| sum_{t in T} J^Delta(xi_i, theta_t, x_i, y_i)
      over a subset T of later epochs (how much xi_i still raises the cost of
      *its own* input later: its stability).

The paper reports the Pearson correlation of the two in the log-log domain,
r = -0.293 (p < 1e-18): shared perturbations are the unstable ones.
`log_log_pearson` computes r = corr(log(offset + a), log(offset + b)) over
the pairs where both arguments of the log are positive; a log-scale plot
cannot show the others either, and the number kept is returned. offset = 0
is the paper's quantity (mean cost changes, non-positive ones dropped);
offset = 1 gives log(1 + count) for the count variant, where a = E.sum(1)
counts the inputs a perturbation fools.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.cpu import compilation
from advjax.analysis import epochs as epochs_lib
from advjax.errors import ConfigError, DataError

# Appendix C / sec. 3.1: a perturbation fooling at least 2% of the other inputs is shared.
SHARED_THRESHOLD = 0.02


def _check_chunk(name, value):
  if value is not None and (not isinstance(value, int) or value < 1):
    raise ConfigError(f"{name}={value!r}: must be None or an int >= 1")


def _per_input(fn, x, y, input_chunk_size):
  """fn(x_chunk, y_chunk) -> [chunk] over all N inputs, `input_chunk_size` at a time."""
  if input_chunk_size is None or input_chunk_size >= x.shape[0]:
    return fn(x, y)
  n = x.shape[0]
  num_chunks = -(-n // input_chunk_size)
  pad = num_chunks * input_chunk_size - n
  # Edge padding repeats real inputs; their results are cut off below.
  x_pad = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
  y_pad = jnp.pad(y, [(0, pad)], mode="edge")
  out = lax.map(lambda a: fn(*a), (x_pad.reshape((num_chunks, input_chunk_size) + x.shape[1:]),
                                   y_pad.reshape(num_chunks, input_chunk_size)))
  return out.reshape((-1,) + out.shape[2:])[:n]


@functools.partial(compilation.jit, static_argnames=("logits_fn", "chunk_size", "input_chunk_size"))
def effective_matrix(logits_fn: epochs_lib.LogitsFn, perturbations: jax.Array, x: jax.Array,
                     y: jax.Array, *, chunk_size: int = 8,
                     input_chunk_size: int | None = None) -> jax.Array:
  """E_{ij}: is perturbation i effective on input j (appendix C)?

  Args:
    logits_fn: `x -> [batch, classes]` of the model the perturbations were made for.
    perturbations: [P, H, W, C] perturbations xi_i (x_adv_i - x_i).
    x: [N, H, W, C] inputs in [0, 1] (may be sharded along N).
    y: [N] their true labels.
    chunk_size: perturbations evaluated together (static); memory grows
      with chunk_size x N (or x input_chunk_size) images.
    input_chunk_size: inputs per evaluation (static); None evaluates all N.

  Returns:
    [P, N] bool: x_j is classified correctly and clip(x_j + xi_i, 0, 1) is not.
  """
  _check_chunk("chunk_size", chunk_size)
  _check_chunk("input_chunk_size", input_chunk_size)

  def predict(xs, ys):
    del ys
    return jnp.argmax(logits_fn(xs), axis=-1)

  clean_correct = _per_input(predict, x, y, input_chunk_size) == y

  def one(xi):
    wrong = _per_input(predict, jnp.clip(x + xi[None], 0.0, 1.0), y, input_chunk_size) != y
    return clean_correct & wrong

  return lax.map(one, perturbations, batch_size=chunk_size)


def sharedness_from_matrix(effective: jax.Array, self_index: jax.Array | None = None) -> jax.Array:
  """s_i = fraction of the other inputs on which perturbation i is effective.

  Args:
    effective: [P, N] bool from `effective_matrix`.
    self_index: optional [P] int, the column of perturbation i's own input
      (excluded from numerator and denominator), or -1 when it is not among
      the N inputs.

  Returns:
    [P] float32 sharedness in [0, 1].
  """
  effective = jnp.asarray(effective)
  num_p, n = effective.shape
  if self_index is None:
    other = jnp.ones((num_p, n), bool)
  else:
    other = jnp.arange(n)[None, :] != jnp.asarray(self_index)[:, None]
  hits = jnp.sum(effective & other, axis=1).astype(jnp.float32)
  return hits / jnp.maximum(jnp.sum(other, axis=1), 1).astype(jnp.float32)


def sharedness(logits_fn: epochs_lib.LogitsFn, perturbations, x, y, self_index=None, *,
               chunk_size: int = 8, input_chunk_size: int | None = None) -> jax.Array:
  """Sharedness s_i of each perturbation under one model (appendix C).

  Args:
    logits_fn: the model the perturbations were made for.
    perturbations: [P, H, W, C].
    x: [N, H, W, C] other inputs in [0, 1].
    y: [N] their labels.
    self_index: optional [P] int column of each perturbation's own input, or -1.
    chunk_size: see `effective_matrix`.
    input_chunk_size: see `effective_matrix`.

  Returns:
    [P] float32 fraction of the other inputs on which xi_i is effective.
  """
  e = effective_matrix(logits_fn, jnp.asarray(perturbations), jnp.asarray(x), jnp.asarray(y),
                       chunk_size=chunk_size, input_chunk_size=input_chunk_size)
  return sharedness_from_matrix(e, self_index)


def sharedness_per_epoch(logits_fns: Sequence[epochs_lib.LogitsFn], perturbation_sets, x, y,
                         self_index=None, *, chunk_size: int = 8,
                         input_chunk_size: int | None = None) -> np.ndarray:
  """Sharedness of each epoch's perturbations under the model of the same epoch.

  Args:
    logits_fns: T closures.
    perturbation_sets: [T, P, H, W, C]; set t made against theta_t (e.g.
      `per_epoch_adversarial(...)[:, :P] - x_source`).
    x: [N, H, W, C] other inputs.
    y: [N] labels.
    self_index: optional [P] int, see `sharedness_from_matrix`.
    chunk_size: see `effective_matrix`.
    input_chunk_size: see `effective_matrix`.

  Returns:
    [T, P] float32 sharedness.
  """
  epochs_lib.check_epochs(logits_fns, np.shape(perturbation_sets)[0], "perturbation_sets")
  return np.stack([
      np.asarray(sharedness(fn, perturbation_sets[t], x, y, self_index, chunk_size=chunk_size,
                            input_chunk_size=input_chunk_size))
      for t, fn in enumerate(logits_fns)])


class SharednessSummary(NamedTuple):
  """Per-epoch statistics of figure 11; each field [T].

  Attributes:
    mean: average sharedness of the epoch's perturbations.
    min: the least shared perturbation.
    max: the most shared perturbation.
    shared_fraction: fraction of perturbations with sharedness >= threshold.
  """
  mean: np.ndarray
  min: np.ndarray
  max: np.ndarray
  shared_fraction: np.ndarray


def summarize_sharedness(fractions, threshold: float = SHARED_THRESHOLD) -> SharednessSummary:
  """Mean, min, max and shared fraction over the perturbations of each epoch.

  Args:
    fractions: [T, P] from `sharedness_per_epoch`.
    threshold: sharedness from which a perturbation counts as shared (2%).

  Returns:
    `SharednessSummary` of [T] arrays.
  """
  f = np.asarray(fractions, np.float64)
  if f.ndim != 2 or f.shape[1] == 0:
    raise DataError(f"fractions must be [T, P] with P > 0, got shape {f.shape}")
  return SharednessSummary(mean=f.mean(1), min=f.min(1), max=f.max(1),
                           shared_fraction=(f >= threshold).mean(1))


def cost_change(logits_fn: epochs_lib.LogitsFn, x: jax.Array, xi: jax.Array,
                y: jax.Array) -> jax.Array:
  """J^Delta(xi, theta, x, y) = J(theta, x + xi, y) - J(theta, x, y), J the cross-entropy.

  Args:
    logits_fn: the model theta.
    x: [N, H, W, C] inputs in [0, 1].
    xi: perturbations broadcastable against x ([N, H, W, C] or [H, W, C]);
      x + xi is clipped to [0, 1].
    y: [N] labels.

  Returns:
    [N] float32 cost change.
  """
  adv = epochs_lib.cross_entropy(logits_fn(jnp.clip(x + xi, 0.0, 1.0)), y)
  return adv - epochs_lib.cross_entropy(logits_fn(x), y)


@functools.partial(compilation.jit, static_argnames=("logits_fn", "chunk_size", "input_chunk_size"))
def current_cost_change(logits_fn: epochs_lib.LogitsFn, perturbations: jax.Array, x: jax.Array,
                        y: jax.Array, *, chunk_size: int = 8,
                        input_chunk_size: int | None = None) -> jax.Array:
  """J^Delta_current,train(xi_i) = 1/N sum_j J^Delta(xi_i, theta, x_j, y_j) (sec. 3.1).

  Args:
    logits_fn: the model the perturbations were made for (theta_0 in the paper).
    perturbations: [P, H, W, C].
    x: [N, H, W, C] (training) inputs in [0, 1].
    y: [N] labels.
    chunk_size: perturbations evaluated together (static).
    input_chunk_size: inputs per evaluation (static); None for all N.

  Returns:
    [P] float32 mean cost change of each perturbation over the N inputs.
  """
  _check_chunk("chunk_size", chunk_size)
  _check_chunk("input_chunk_size", input_chunk_size)

  def ce(xs, ys):
    return epochs_lib.cross_entropy(logits_fn(xs), ys)

  clean = _per_input(ce, x, y, input_chunk_size)

  def one(xi):
    return jnp.mean(_per_input(ce, jnp.clip(x + xi[None], 0.0, 1.0), y, input_chunk_size) - clean)

  return lax.map(one, perturbations, batch_size=chunk_size)


_cost_change_jit = compilation.jit(cost_change, static_argnames=("logits_fn",))


def future_cost_change(logits_fns: Sequence[epochs_lib.LogitsFn], x, xi, y,
                       batch_size: int | None = None) -> np.ndarray:
  """J^Delta_future,test(xi_i) = 1/|T| sum_{t in T} J^Delta(xi_i, theta_t, x_i, y_i) (sec. 3.1).

  Args:
    logits_fns: the models theta_t of the epoch subset T.
    x: [P, H, W, C] the perturbations' own inputs.
    xi: [P, H, W, C] their perturbations.
    y: [P] labels.
    batch_size: examples per jitted call.

  Returns:
    [P] float64 cost change averaged over the epochs.
  """
  epochs_lib.check_epochs(logits_fns)
  total = 0.0
  for fn in logits_fns:
    total = total + epochs_lib.map_batched(functools.partial(_cost_change_jit, fn), [x, xi, y],
                                           batch_size).astype(np.float64)
  return total / len(logits_fns)


def log_log_pearson(a, b, offset: float = 0.0) -> tuple[float, int]:
  """Pearson r of log(offset + a) and log(offset + b) (figure 2's statistic).

  Pairs where offset + a <= 0 or offset + b <= 0 have no logarithm and are
  left out (as on the paper's log-scale axes); the count kept is returned.

  Args:
    a: [P] values, e.g. J^Delta_current,train.
    b: [P] values, e.g. J^Delta_future,test.
    offset: added before the log; 0 for cost changes, 1 for counts.

  Returns:
    (r, number of pairs used).

  Raises:
    DataError: shapes differ, or fewer than 3 pairs remain.
  """
  a = np.asarray(a, np.float64).reshape(-1)
  b = np.asarray(b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise DataError(f"log_log_pearson needs equal lengths, got {a.shape[0]} and {b.shape[0]}")
  keep = (offset + a > 0) & (offset + b > 0)
  n = int(keep.sum())
  if n < 3:
    raise DataError(f"log_log_pearson: only {n} pairs with positive values, need at least 3")
  la, lb = np.log(offset + a[keep]), np.log(offset + b[keep])
  la, lb = la - la.mean(), lb - lb.mean()
  return float(np.sum(la * lb) / np.sqrt(np.sum(la * la) * np.sum(lb * lb))), n


class CostChangeCorrelation(NamedTuple):
  """Figure 2's data.

  Attributes:
    current: [P] J^Delta_current,train of each perturbation (x axis).
    future: [P] J^Delta_future,test (y axis).
    r: Pearson correlation in the log-log domain (paper: -0.293).
    num_used: pairs with both values positive, over which r is computed.
  """
  current: np.ndarray
  future: np.ndarray
  r: float
  num_used: int


def sharedness_stability_correlation(current_logits_fn: epochs_lib.LogitsFn,
                                     future_logits_fns: Sequence[epochs_lib.LogitsFn],
                                     x, xi, y, x_train, y_train, *, chunk_size: int = 8,
                                     input_chunk_size: int | None = None,
                                     batch_size: int | None = None) -> CostChangeCorrelation:
  """Cost change on other inputs now vs. on the own input later (sec. 3.1, figure 2).

  Args:
    current_logits_fn: theta_{t=0}, the model xi was made for.
    future_logits_fns: the models of the epoch subset T.
    x: [P, H, W, C] test inputs x_i.
    xi: [P, H, W, C] their perturbations xi_{i, t=0}.
    y: [P] their labels.
    x_train: [N, H, W, C] training inputs x_j.
    y_train: [N] their labels.
    chunk_size: see `current_cost_change`.
    input_chunk_size: see `current_cost_change`.
    batch_size: examples per call of `future_cost_change`.

  Returns:
    `CostChangeCorrelation` with r from `log_log_pearson(current, future)`.
  """
  current = np.asarray(current_cost_change(
      current_logits_fn, jnp.asarray(xi), jnp.asarray(x_train), jnp.asarray(y_train),
      chunk_size=chunk_size, input_chunk_size=input_chunk_size), np.float64)
  future = future_cost_change(future_logits_fns, x, xi, y, batch_size)
  r, n = log_log_pearson(current, future)
  return CostChangeCorrelation(current=current, future=future, r=r, num_used=n)
