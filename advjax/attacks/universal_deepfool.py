"""Iterative DeepFool universal perturbations (Moosavi-Dezfooli et al., 2017).

The original universal attack, algorithm 1 of Shafahi et al., "Universal
adversarial training" (called iDeepFool there), looks for one perturbation v
with ||v||_p <= eps that changes the prediction on at least a fraction
1 - xi of the data points X (their problem 1):

  v <- 0
  while Prob(X, v) < 1 - xi:
    for x_i in X:
      if f(x_i + v) == f(x_i):
        r_i <- the minimal (DeepFool) perturbation with f(x_i + v + r_i) != f(x_i)
        if DeepFool converged:
          v <- Proj_eps(v + r_i)

Prob(X, v) is the fooling ratio, the fraction of points whose predicted class
changes when v is added. Labels play no part: the reference is the clean
prediction f(x_i), and DeepFool moves x_i + v away from it. As in the
authors' code, r_i is added only when DeepFool converged (it fooled the point
within its iteration budget); a step that did not reach the boundary is
dropped rather than pushed into v.

Batching, and how it departs from the sequential original. One pass visits
the (shuffled) points in mini-batches of `batch_size`. For each mini-batch
the fooling test and DeepFool run on all of its x_i + v at once, with the v
of the start of the mini-batch; then the perturbations r_i of the points that
were not fooled are folded into v one after another, v <- Proj(v + r_i),
exactly the original update. The only difference is staleness: within a
mini-batch, r_i is computed at the v of the batch start rather than at the v
that already includes r_1..r_{i-1}, and a point fooled by those earlier
updates still contributes its r_i. With `batch_size = 1` the algorithm is
the original one. Folding sequentially rather than summing keeps the
projection between updates, so a mini-batch cannot push v far outside the
ball and be cut back in one step. A pass is one compiled `lax.scan` over its
mini-batches; the data are padded to whole mini-batches with masked rows.

DeepFool here is `advjax.attacks.deepfool` (L2 by default, as in the
reference code, whatever the norm of the ball v is projected onto), and as
there x + v is clipped to the image box [0, 1]. After each pass the fooling
ratio on all of X at the current v is recorded; the loop stops when it
reaches 1 - xi or after `max_passes` passes (the original has no pass limit,
and the outer loop need not converge; UAT's comparison stops it after 10).
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.cpu import compilation
from advjax.attacks import deepfool as deepfool_lib
from advjax.attacks import threat
from advjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class UniversalDeepFoolConfig:
  """Hyper-parameters of iterative DeepFool (hashable; a jit static argument).

  Defaults follow the authors' reference code: eps = 10 in L-inf, xi = 0.2,
  DeepFool with 10 iterations, overshoot 0.02 and 10 candidate classes.

  Attributes:
    eps: radius of the ball v is projected onto, 0-255 pixel units.
    norm: 'linf' or 'l2', the ball of v.
    xi: stop once the fooling ratio on X is at least 1 - xi.
    max_passes: at most this many passes over X.
    batch_size: points per DeepFool call (1 is the sequential original).
    shuffle: visit X in a fresh random order every pass (as the reference does).
    deepfool: configuration of the per-point DeepFool.
  """
  eps: float = 10.0
  norm: str = "linf"
  xi: float = 0.2
  max_passes: int = 10
  batch_size: int = 32
  shuffle: bool = True
  deepfool: deepfool_lib.DeepFoolConfig = deepfool_lib.DeepFoolConfig(num_steps=10)

  def __post_init__(self):
    if not self.eps > 0:
      raise ConfigError(f"eps={self.eps!r}: must be positive")
    if self.norm not in threat.NORMS:
      raise ConfigError(f"norm={self.norm!r}: must be one of linf, l2")
    if not 0 <= self.xi < 1:
      raise ConfigError(f"xi={self.xi!r}: must be in [0, 1)")
    for name in ("max_passes", "batch_size"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value >= 1):
        raise ConfigError(f"{name}={value!r}: must be an int >= 1")


class UniversalDeepFoolResult(NamedTuple):
  """What `universal_deepfool` returns.

  Attributes:
    perturbation: v [height, width, channels] on the [0, 1] image scale.
    fooling_rates: [passes] fooling ratio on X after each pass.
  """
  perturbation: jax.Array
  fooling_rates: np.ndarray


def _predict(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


_clean_predictions = compilation.jit(_predict, static_argnums=0)


@functools.partial(compilation.jit, static_argnames=("logits_fn",))
def _fooled(logits_fn: Callable, v: jax.Array, x: jax.Array, clean: jax.Array) -> jax.Array:
  """[batch] whether adding v changes each prediction."""
  return _predict(logits_fn, threat.apply(x, v)) != clean


@functools.partial(compilation.jit, static_argnames=("logits_fn", "eps", "norm", "deepfool_cfg"))
def _one_pass(logits_fn: Callable, v: jax.Array, xs: jax.Array, clean: jax.Array, mask: jax.Array, *,
              eps: float, norm: str, deepfool_cfg: deepfool_lib.DeepFoolConfig) -> jax.Array:
  """One pass of algorithm 1 over mini-batches.

  Args:
    logits_fn: `x -> [batch, classes]` (static).
    v: [H, W, C] the current perturbation.
    xs: [num_batches, batch, H, W, C] the points in visiting order.
    clean: [num_batches, batch] their clean predictions.
    mask: [num_batches, batch] False on padding rows.
    eps: radius on the [0, 1] scale (static).
    norm: the ball's norm (static).
    deepfool_cfg: DeepFool's config (static).

  Returns:
    v [H, W, C] after the pass.
  """

  def batch_update(v, inputs):
    x, y, m = inputs
    x_v = threat.apply(x, v)
    unfooled = m & (_predict(logits_fn, x_v) == y)
    # DeepFool leaves already fooled points unchanged; their r_i are masked below anyway.
    result = deepfool_lib.deepfool_with_info(logits_fn, x_v, y, jax.random.PRNGKey(0), deepfool_cfg)
    r = result.x_adv - x_v
    take_r = unfooled & result.fooled

    def fold(v, item):
      r_i, take = item
      return jnp.where(take, threat.project((v + r_i)[None], norm, eps)[0], v), None

    v, _ = lax.scan(fold, v, (r, take_r))
    return v, None

  v, _ = lax.scan(batch_update, v, (xs, clean, mask))
  return v


def _batched(array: np.ndarray, order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """`array[order]` padded to whole mini-batches: ([num_batches, batch, ...], mask [num_batches, batch])."""
  n = len(order)
  num_batches = -(-n // batch_size)
  padded = np.concatenate([order, np.full(num_batches * batch_size - n, order[0])])
  mask = np.arange(num_batches * batch_size) < n
  out = np.asarray(array)[padded]
  return (out.reshape((num_batches, batch_size) + out.shape[1:]), mask.reshape(num_batches, batch_size))


def fooling_rate(logits_fn: Callable, images, v: jax.Array, clean, batch_size: int = 256) -> float:
  """Prob(X, v): the fraction of points whose prediction changes when v is added.

  Args:
    logits_fn: `x -> [batch, classes]`.
    images: [N, H, W, C] in [0, 1].
    v: [H, W, C] perturbation.
    clean: [N] clean predictions f(x_i).
    batch_size: evaluation batch size (the last batch is padded, not recompiled).

  Returns:
    The fooling ratio in [0, 1].
  """
  xs, mask = _batched(images, np.arange(len(images)), batch_size)
  ys, _ = _batched(clean, np.arange(len(images)), batch_size)
  fooled = sum(int(np.sum(np.asarray(_fooled(logits_fn, v, x, y)) & m)) for x, y, m in zip(xs, ys, mask))
  return fooled / len(images)


def universal_deepfool(logits_fn: Callable, images, rng: jax.Array,
                       cfg: UniversalDeepFoolConfig = UniversalDeepFoolConfig()) -> UniversalDeepFoolResult:
  """Algorithm 1: a universal perturbation from DeepFool steps on unfooled points.

  Args:
    logits_fn: `x -> [batch, classes]` closure over a frozen model.
    images: X, [N, height, width, channels] in [0, 1] (numpy or jax).
    rng: key for the visiting order of each pass.
    cfg: `UniversalDeepFoolConfig`.

  Returns:
    `UniversalDeepFoolResult(perturbation [H, W, C], fooling_rates [passes])`,
    the perturbation inside the eps ball of `cfg.norm`.
  """
  images = np.asarray(images, np.float32)
  n = len(images)
  xs_all, _ = _batched(images, np.arange(n), cfg.batch_size)
  clean = np.concatenate([np.asarray(_clean_predictions(logits_fn, x)) for x in xs_all])[:n]
  v = jnp.zeros(images.shape[1:], jnp.float32)
  rates = []
  for p in range(cfg.max_passes):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, p), n)) if cfg.shuffle else np.arange(n)
    xs, mask = _batched(images, order, cfg.batch_size)
    ys, _ = _batched(clean, order, cfg.batch_size)
    v = _one_pass(logits_fn, v, xs, ys, mask, eps=threat.to_unit(cfg.eps), norm=cfg.norm,
                  deepfool_cfg=cfg.deepfool)
    rates.append(fooling_rate(logits_fn, images, v, clean, cfg.batch_size))
    if rates[-1] >= 1.0 - cfg.xi:
      break
  return UniversalDeepFoolResult(v, np.asarray(rates))
