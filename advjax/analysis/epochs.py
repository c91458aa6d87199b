"""Per-epoch models and per-epoch adversarial sets: what every analysis consumes.

The universality paper (sec. 3) follows one classifier through T epochs of
adversarial training and keeps its parameters theta_t after every epoch t.
Here epoch t is a closure `logits_fns[t]: x -> [batch, classes]` over images
x [batch, H, W, C] in [0, 1] (build it with `advjax.attacks.make_logits_fn`),
and the analyses take the list `logits_fns` of all of them.

For every epoch they need adversarial examples x + xi_t made against
theta_t, stacked into `x_adv_sets` [T, N, H, W, C] (`per_epoch_adversarial`).
The paper's three adversaries (sec. 2, sec. 3 and appendix F) are the presets
of `adversary_config`, with sizes in 0-255 pixel units:

  'bi'        basic iterative method (Kurakin et al.):
              xi^(0) = 0, xi^(n+1) = Clip_eps{xi^(n) + alpha sgn(grad_x J(theta, x + xi^(n), y))},
              eps = 4, alpha = 1, 10 iterations (sec. 3)
  'fgsm'      xi = eps sgn(grad_x J(theta, x, y)), eps = 4
  'deepfool'  DeepFool (Moosavi-Dezfooli et al., 2016), L2, 50 iterations,
              overshoot 0.02 (the authors' defaults; the paper states none)

The attacks use the true label y (sec. 2 writes the adversaries with
y^true; the predicted label is the paper's choice for *training* only, to
avoid label leaking). The perturbation of an example is xi = x_adv - x,
already folded into the box, so x + xi = x_adv lies in [0, 1].

`cross_evaluate` is the common core of the stability profile and the
black-box transfer matrix: every model evaluated on every set, per example.
Work over the data runs in jitted batches of a fixed size (the last batch is
padded with copies of its last example and the padding is dropped from the
results, so one compilation serves every batch); the loops over epochs and
batches run on the host and results come back as NumPy arrays.
"""

import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.cpu import compilation
from advjax.attacks import deepfool as deepfool_lib
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError, DataError, unknown_name

ADVERSARIES = ("bi", "fgsm", "deepfool")
LogitsFn = Callable[[jax.Array], jax.Array]
Adversary = pgd_lib.AttackConfig | deepfool_lib.DeepFoolConfig


def adversary_config(name: str, eps: float = 4.0) -> Adversary:
  """The paper's adversary presets (sec. 3 and appendix F).

  Args:
    name: 'bi', 'fgsm' or 'deepfool'.
    eps: L-inf radius of BI and FGSM in 0-255 units (the paper's 4 on
      CIFAR10, 8 on GTSRB); DeepFool finds a minimal perturbation and ignores it.

  Returns:
    `pgd.AttackConfig` for 'bi' (step size 1, 10 iterations) and 'fgsm',
    `deepfool.DeepFoolConfig()` for 'deepfool'.

  Raises:
    ConfigError: unknown name.
  """
  if name == "bi":
    return pgd_lib.bim(eps=eps, step_size=1.0, num_steps=10)
  if name == "fgsm":
    return pgd_lib.fgsm(eps=eps)
  if name == "deepfool":
    return deepfool_lib.DeepFoolConfig()
  raise unknown_name("adversary", name, ADVERSARIES)


def resolve_adversary(adversary: str | Adversary) -> Adversary:
  """A preset name or a config -> the config (`AttackConfig` or `DeepFoolConfig`)."""
  if isinstance(adversary, str):
    return adversary_config(adversary)
  if isinstance(adversary, (pgd_lib.AttackConfig, deepfool_lib.DeepFoolConfig)):
    return adversary
  raise ConfigError(f"adversary must be a name in {ADVERSARIES}, an AttackConfig or a "
                    f"DeepFoolConfig, got {type(adversary).__name__}")


def batch_slices(n: int, batch_size: int | None) -> Iterator[slice]:
  """Consecutive slices of at most `batch_size` (all of [0, n) when None)."""
  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"batch_size={batch_size!r}: must be None or an int >= 1")
  size = n if batch_size is None else batch_size
  for start in range(0, n, max(size, 1)):
    yield slice(start, min(start + size, n))


def take_padded(a, sl: slice, size: int, axis: int = 0) -> np.ndarray:
  """`a[sl]` along `axis`, padded to `size` with copies of its last entry."""
  part = np.asarray(a[(slice(None),) * axis + (sl,)])
  missing = size - part.shape[axis]
  if missing == 0:
    return part
  last = np.take(part, [-1], axis=axis)
  return np.concatenate([part, np.repeat(last, missing, axis=axis)], axis=axis)


def map_batched(fn: Callable, arrays: Sequence, batch_size: int | None,
                axes: Sequence[int] | None = None):
  """Applies a per-example `fn` in fixed-size batches and concatenates the results.

  Args:
    fn: `(*batch_arrays) -> output or tuple of outputs`, each output with the
      batch on its leading axis; usually a jitted function.
    arrays: arrays sharing the example axis (length N).
    batch_size: examples per call; None runs one call on all N.
    axes: the example axis of each array (default 0 for all).

  Returns:
    The outputs of `fn` concatenated over the batches, padding removed, as
    NumPy arrays (a tuple when `fn` returns a tuple).

  Raises:
    DataError: the arrays disagree on N, or N is 0.
  """
  axes = [0] * len(arrays) if axes is None else list(axes)
  sizes = {np.shape(a)[ax] for a, ax in zip(arrays, axes)}
  if len(sizes) != 1:
    raise DataError(f"arrays disagree on the number of examples: {sorted(sizes)}")
  n = sizes.pop()
  if n == 0:
    raise DataError("no examples to evaluate")
  size = n if batch_size is None else min(batch_size, n)
  parts = []
  for sl in batch_slices(n, size):
    out = fn(*[take_padded(a, sl, size, ax) for a, ax in zip(arrays, axes)])
    real = sl.stop - sl.start
    parts.append(jax.tree.map(lambda o: np.asarray(o)[:real], out))
  return jax.tree.map(lambda *p: np.concatenate(p, axis=0), *parts)


def check_epochs(logits_fns: Sequence[LogitsFn], num: int | None = None, what: str = "") -> None:
  """Raises unless `logits_fns` is non-empty and, given `num`, has `num` entries.

  Raises:
    ConfigError: no models.
    DataError: `what` has `num` epochs but there are another number of models.
  """
  if len(logits_fns) == 0:
    raise ConfigError("logits_fns is empty: pass one logits_fn per epoch")
  if num is not None and num != len(logits_fns):
    raise DataError(f"{what} has {num} epochs but logits_fns has {len(logits_fns)}")


def adversarial_examples(logits_fn: LogitsFn, x, y, rng: jax.Array,
                         adversary: str | Adversary = "bi",
                         batch_size: int | None = None) -> np.ndarray:
  """Adversarial examples of one model with `pgd.attack` or `deepfool.deepfool`.

  Args:
    logits_fn: `x -> [batch, classes]` of the attacked model.
    x: [N, H, W, C] clean images in [0, 1].
    y: [N] true labels.
    rng: PRNG key; batch b is attacked with `fold_in(rng, b)` (BI, FGSM and
      DeepFool are deterministic, so only random-start configs depend on it).
    adversary: a name of `ADVERSARIES` or an `AttackConfig` / `DeepFoolConfig`.
    batch_size: examples per attack call; None attacks all N at once.

  Returns:
    [N, H, W, C] adversarial images x + xi in [0, 1].
  """
  cfg = resolve_adversary(adversary)
  y = np.asarray(y)
  parts = []
  n = np.shape(x)[0]
  size = n if batch_size is None else min(batch_size, n)
  for b, sl in enumerate(batch_slices(n, size)):
    key = jax.random.fold_in(rng, b)
    xb, yb = jnp.asarray(take_padded(x, sl, size)), jnp.asarray(take_padded(y, sl, size))
    if isinstance(cfg, deepfool_lib.DeepFoolConfig):
      x_adv = deepfool_lib.deepfool(logits_fn, xb, yb, key, cfg)
    else:
      x_adv = pgd_lib.attack(logits_fn, xb, yb, key, cfg)
    parts.append(np.asarray(x_adv)[:sl.stop - sl.start])
  return np.concatenate(parts, axis=0)


def per_epoch_adversarial(logits_fns: Sequence[LogitsFn], x, y, rng: jax.Array,
                          adversary: str | Adversary = "bi",
                          batch_size: int | None = None) -> np.ndarray:
  """x + xi_t for every epoch t, each xi_t made against theta_t (white-box).

  Args:
    logits_fns: T closures, one per epoch.
    x: [N, H, W, C] clean images in [0, 1].
    y: [N] true labels.
    rng: PRNG key; epoch t uses `fold_in(rng, t)`.
    adversary: a name of `ADVERSARIES` or an attack config.
    batch_size: examples per attack call.

  Returns:
    x_adv_sets [T, N, H, W, C] in [0, 1].
  """
  check_epochs(logits_fns)
  return np.stack([
      adversarial_examples(fn, x, y, jax.random.fold_in(rng, t), adversary, batch_size)
      for t, fn in enumerate(logits_fns)])


def true_class_probs(logits: jax.Array, y: jax.Array) -> jax.Array:
  """p(y | x) = softmax(logits)_y: [..., classes], [...] -> [...] float32."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, y[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """J = -log p(y | x): [..., classes], [...] -> [...] float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, y[..., None].astype(jnp.int32), axis=-1)[..., 0]


@functools.partial(compilation.jit, static_argnames=("logits_fn",))
def _evaluate_sets(logits_fn, x_sets, y):
  def one(x):
    logits = logits_fn(x)
    return true_class_probs(logits, y), jnp.argmax(logits, axis=-1) == y
  probs, correct = lax.map(one, x_sets)
  # Examples on the leading axis, so `map_batched` can drop the padding.
  return probs.T, correct.T


def cross_evaluate(logits_fns: Sequence[LogitsFn], x_sets, y,
                   batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Every model on every input set, per example.

  Args:
    logits_fns: M closures (the evaluated models, e.g. one per epoch).
    x_sets: [S, N, H, W, C] input sets (e.g. `per_epoch_adversarial`).
    y: [N] true labels.
    batch_size: examples per jitted call (each call sees all S sets).

  Returns:
    (probs, correct), both [S, M, N]: probs[s, m, n] = p(y_n | x_sets[s, n];
    model m) and correct[s, m, n] = (argmax of model m on x_sets[s, n] == y_n).
  """
  check_epochs(logits_fns)
  if np.ndim(x_sets) < 2 or np.shape(x_sets)[1] != np.shape(y)[0]:
    raise DataError(f"x_sets must be [sets, N, ...] with N = len(y) = {np.shape(y)[0]}, "
                    f"got shape {np.shape(x_sets)}")
  probs, correct = [], []
  for fn in logits_fns:
    p, c = map_batched(functools.partial(_evaluate_sets, fn), [x_sets, y], batch_size,
                       axes=[1, 0])
    probs.append(p.T)
    correct.append(c.T)
  return np.stack(probs, axis=1), np.stack(correct, axis=1)


@functools.partial(compilation.jit, static_argnames=("logits_fn",))
def _predict(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


def predictions(logits_fn: LogitsFn, x, batch_size: int | None = None) -> np.ndarray:
  """[N] int predicted classes of one model on x [N, H, W, C]."""
  return map_batched(functools.partial(_predict, logits_fn), [x], batch_size)
