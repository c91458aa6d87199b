"""Universal perturbations: one stochastic projected-ascent loop, three papers' attacks.

A universal perturbation xi [H, W, C] is added to every input, x_adv =
clip(x + xi, 0, 1), and maximises the expected loss over the data,

  max_xi  E_(x, y) L_adv(x + xi, y)   s.t. ||xi||_p <= eps

(shared adversarial training, sec. 3, rho_uni; UAT, eq. 2). Every method here
solves it by stochastic projected gradient ascent on a stream of mini-batches.
Iteration k draws `grad_batches` mini-batches B_1..B_G, takes on each the
gradient of the masked mean loss g_j = grad_xi 1/|B_j| sum_i L_adv(x_i + xi, y_i),
combines them, and updates

  xi_{k+1} = P_eps(xi_k + alpha_k * rule(combine(g_1..g_G)))

with P_eps the projection onto the eps ball after every update. The papers
differ only in the knobs of `UniversalConfig`:

  shared adversarial training, sec. 5.2 (S-PGD, `shared_at_eval_config`):
    rule = sign, G = 1 (mini-batches of m_k = 16 examples), K = 200,
    annealed alpha_k = beta eps gamma^k / sum_{j<K} gamma^j with beta = 4 and
    gamma = 0.975, loss min(CE, kappa), kappa = -log 0.2 (sec. 4.3).
  Universal adversarial training, algorithm 2 (`uat_config`): rule = sign
    ("PGD", the paper's default), sgd, momentum SGD or Adam on the clipped loss
    min(l, beta) of eq. 3 (`kappa` here, so it does not collide with the
    schedule's beta); constant step size.
  Universality, robustness and detectability, appendix D (`appendix_d_config`):
    Xi_{n+1} = Clip_eps(Xi_n + alpha/K sum_{k=1..K} sgn(grad^{D_k}(Xi_n))), the
    average of the *signs* of the mean gradients of K = 10 mini-batches;
    `grad_batches` = K, eps = 10, alpha = 2.5, 200 iterations, plain CE.

`combine` is the mean of sign(g_j) for the sign rule (for G = 1 that is plain
sign ascent) and the mean of g_j for the others, which then feed SGD
(direction g), momentum SGD (v = mu v + g, direction v) or Adam (optax at unit
learning rate). Step sizes are in 0-255 pixel units like every advjax size, so
an SGD step is alpha/255 times the raw gradient.

The parts:

  `init_universal`      xi_0 (zero, or uniform in the ball) and the rule's state
  `universal_step`      one jitted update (xi, opt_state, batch, k) -> (xi, opt_state);
                        usable inside a training step (UAT algorithm 3)
  `universal_perturbation`  the driver: streams any iterable of batches (cycled
                        if re-iterable), one compile for all K updates and all eps
  `evaluate_universal`  accuracy with xi added on held-out data, fooling ratio
                        (UAT footnote 1: the fraction whose prediction changes)
  `eps_uni_search`      eps_uni(delta) of sec. 5.1-5.2 by binary search

Batches are dicts {'image': [B, H, W, C] in [0, 1], 'label': [B], 'mask': [B]}
as in `advjax.evaluation.robustness`; the mask (optional, default all ones)
removes padding from every mean, so a ragged last batch can be padded to the
common shape and nothing recompiles. As there, `logits_fn` is `x -> logits`,
or a builder `variables -> (x -> logits)` when `variables=` is given.
"""

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from advjax import typed_config
from advjax.attacks import losses, threat
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError, DataError

STEP_RULES = ("sign", "sgd", "momentum", "adam")
INITS = ("zero", "uniform")


@dataclasses.dataclass(frozen=True)
class UniversalConfig:
  """Hyper-parameters of a universal attack; frozen and hashable, a valid jit static arg.

  Attributes:
    norm: 'linf' or 'l2' ball of the perturbation.
    eps: radius in 0-255 pixel units (8.0 means 8/255).
    num_iterations: number of updates K; each consumes `grad_batches` batches.
    step_rule: 'sign' (S-PGD / FGSM rule, linf only), 'sgd', 'momentum'
      (momentum SGD) or 'adam' (optax.adam at unit learning rate).
    step_size: constant alpha in 0-255 pixel units.
    momentum: mu of the 'momentum' rule.
    step_schedule: 'constant' or 'annealed'
      (alpha_k = beta eps gamma^k / sum_{j<K} gamma^j, sec. 5.2).
    beta: total step length of the annealed schedule in multiples of eps.
    gamma: decay of the annealed schedule.
    loss: per-example loss name in `losses.LOSS_NAMES`.
    kappa: cap of 'clipped_cross_entropy' (shared AT's kappa, UAT's beta).
    label_smoothing: smoothing of the cross-entropy targets.
    targeted: push every input towards `target_class` with the targeted loss.
    target_class: the single target class of a targeted universal attack.
    grad_batches: mini-batches per update whose gradients are combined
      (appendix D averages their signs); 1 is plain stochastic ascent.
    init: 'zero' (all three papers) or 'uniform' in the ball.
  """
  norm: str = "linf"
  eps: float = 10.0
  num_iterations: int = 200
  step_rule: str = "sign"
  step_size: float = 1.0
  momentum: float = 0.9
  step_schedule: str = "constant"
  beta: float = 4.0
  gamma: float = 0.975
  loss: str = "clipped_cross_entropy"
  kappa: float = -math.log(0.2)
  label_smoothing: float = 0.0
  targeted: bool = False
  target_class: int = -1
  grad_batches: int = 1
  init: str = "zero"

  def __post_init__(self):
    _validate(self)

  @classmethod
  def from_config(cls, config) -> "UniversalConfig":
    """Builds a config from a ConfigDict or dict with fields of the same names.

    Args:
      config: `ml_collections.ConfigDict` or mapping; missing fields keep
        their defaults.

    Returns:
      The validated `UniversalConfig`.

    Raises:
      ConfigError: an unknown field, or a field with a bad type or value.
    """
    return typed_config.from_mapping(cls, config, "universal config")


def _validate(cfg: UniversalConfig) -> None:
  def check(ok, field, why):
    if not ok:
      raise ConfigError(f"universal config field {field!r}={getattr(cfg, field)!r}: {why}")

  def one_of(field, options):
    check(getattr(cfg, field) in options, field, f"must be one of {', '.join(options)}")

  one_of("norm", threat.NORMS)
  check(cfg.eps >= 0, "eps", "must be >= 0 (0-255 pixel units)")
  check(isinstance(cfg.num_iterations, int) and cfg.num_iterations >= 0, "num_iterations",
        "must be an int >= 0")
  one_of("step_rule", STEP_RULES)
  check(cfg.step_rule != "sign" or cfg.norm == "linf", "step_rule",
        "'sign' is the linf steepest ascent; use sgd, momentum or adam with norm='l2'")
  check(cfg.step_size >= 0, "step_size", "must be >= 0 (0-255 pixel units)")
  check(cfg.momentum >= 0, "momentum", "must be >= 0")
  one_of("step_schedule", pgd_lib.SCHEDULES)
  check(cfg.beta > 0, "beta", "must be > 0")
  check(cfg.gamma > 0, "gamma", "must be > 0")
  one_of("loss", losses.LOSS_NAMES)
  try:
    losses.get_loss(cfg.loss, cfg.targeted)
  except ConfigError as e:
    check(False, "targeted", str(e))
  check(cfg.kappa > 0, "kappa", "must be > 0")
  check(0.0 <= cfg.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
  check(not cfg.targeted or cfg.target_class >= 0, "target_class",
        "a targeted universal attack needs target_class >= 0")
  check(isinstance(cfg.grad_batches, int) and cfg.grad_batches >= 1, "grad_batches",
        "must be an int >= 1")
  one_of("init", INITS)


def shared_at_eval_config(**overrides) -> UniversalConfig:
  """The S-PGD universal adversary of shared adversarial training's evaluation (sec. 5.2).

  K = 200 sign steps with the annealed schedule (beta = 4, gamma = 0.975) on
  the thresholded loss min(CE, -log 0.2); feed mini-batches of m_k = 16
  examples. eps is set by `eps_uni_search`.
  """
  return UniversalConfig(**{**dict(
      norm="linf", eps=255.0, num_iterations=200, step_rule="sign", step_schedule="annealed",
      beta=4.0, gamma=0.975, loss="clipped_cross_entropy"), **overrides})


def uat_config(eps: float = 8.0, step_rule: str = "sign", step_size: float = 1.0,
               kappa: float = 9.0, **overrides) -> UniversalConfig:
  """Algorithm 2 of universal adversarial training (Shafahi et al.).

  Defaults: eps = 8 and step size 1 (fig. 2, CIFAR-10), the sign ("PGD") rule
  the paper uses unless stated otherwise, the clipped loss min(l, beta) with
  beta = 9 (fig. 5, Inception-V3). `num_iterations` = epochs x batches per epoch.
  """
  return UniversalConfig(**{**dict(
      eps=eps, step_rule=step_rule, step_size=step_size, loss="clipped_cross_entropy",
      kappa=kappa), **overrides})


def appendix_d_config(**overrides) -> UniversalConfig:
  """Appendix D of 'universality, robustness and detectability': averaged sign gradients.

  eps = 10, alpha = 2.5, K = 10 mini-batches (of m = 128) per update, 200
  updates, cross-entropy on the true labels.
  """
  return UniversalConfig(**{**dict(
      norm="linf", eps=10.0, step_size=2.5, grad_batches=10, num_iterations=200,
      step_rule="sign", loss="cross_entropy"), **overrides})


def _rule(cfg: UniversalConfig):
  """(init(xi) -> state, direction(combined gradient, state) -> (d, state))."""
  if cfg.step_rule in ("sign", "sgd"):
    # For 'sign' the signs were taken per mini-batch before combining (appendix D).
    return (lambda xi: (), lambda g, s: (g, s))
  if cfg.step_rule == "momentum":
    return (jnp.zeros_like, lambda g, v: (cfg.momentum * v + g,) * 2)
  opt = optax.adam(learning_rate=1.0)

  def update(g, state):
    # optax minimises; feeding -g makes its update an ascent direction.
    return opt.update(-g, state)
  return (opt.init, update)


def _step_size(cfg: UniversalConfig, eps_unit, k):
  if cfg.step_schedule == "constant":
    return threat.to_unit(cfg.step_size)
  total = sum(cfg.gamma ** j for j in range(max(cfg.num_iterations, 1)))
  return cfg.beta * eps_unit * jnp.power(cfg.gamma, k) / total


def _project(xi, cfg: UniversalConfig, eps_unit):
  # threat.project takes a leading perturbation axis.
  return threat.project(xi[None], cfg.norm, eps_unit)[0]


def _eps_unit(cfg: UniversalConfig, eps):
  return threat.to_unit(jnp.asarray(cfg.eps if eps is None else eps, jnp.float32))


def _resolve(logits_fn, variables):
  return logits_fn if variables is None else logits_fn(variables)


def _mask(batch):
  if "mask" in batch:
    return batch["mask"].astype(jnp.float32)
  return jnp.ones(batch["label"].shape[:1], jnp.float32)


def universal_labels(labels: jax.Array, cfg: UniversalConfig) -> jax.Array:
  """True labels, or `cfg.target_class` everywhere (ignored negative labels kept)."""
  if not cfg.targeted:
    return labels
  return jnp.where(labels >= 0, cfg.target_class, labels).astype(jnp.int32)


def init_universal(rng: jax.Array, cfg: UniversalConfig, image_shape, eps=None,
                   dtype=jnp.float32) -> tuple[jax.Array, Any]:
  """xi_0 and the step rule's initial state.

  Args:
    rng: PRNG key (used by init='uniform').
    cfg: universal config.
    image_shape: (H, W, C) of one image.
    eps: optional override of `cfg.eps`, 0-255 units, possibly traced.
    dtype: float dtype of xi.

  Returns:
    (xi [H, W, C] inside the ball, opt_state).
  """
  shape = tuple(image_shape)
  if cfg.init == "zero":
    xi = jnp.zeros(shape, dtype)
  else:
    xi = threat.random_init(rng, (1,) + shape, cfg.norm, _eps_unit(cfg, eps), dtype)[0]
  return xi, _rule(cfg)[0](xi)


def batch_gradient(fn: Callable, xi: jax.Array, batch: dict, cfg: UniversalConfig) -> jax.Array:
  """Gradient of the masked mean loss of one batch with respect to xi.

  Args:
    fn: `x -> logits`.
    xi: [H, W, C] universal perturbation.
    batch: {'image': [B, H, W, C], 'label': [B], optional 'mask': [B]}.
    cfg: universal config (loss and labels).

  Returns:
    [H, W, C] grad_xi 1/sum(mask) sum_i mask_i L_adv(clip(x_i + xi, 0, 1), y_i).
  """
  loss_fn = losses.get_loss(cfg.loss, cfg.targeted, label_smoothing=cfg.label_smoothing,
                            kappa=cfg.kappa)
  labels = universal_labels(batch["label"], cfg)
  mask = _mask(batch)

  def mean_loss(xi):
    per_example = loss_fn(fn(threat.apply(batch["image"], xi)), labels)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  return jax.grad(mean_loss)(xi)


@functools.partial(jax.jit, static_argnames=("logits_fn", "cfg"))
def universal_step(logits_fn: Callable, xi: jax.Array, opt_state: Any, batch: dict, k,
                   cfg: UniversalConfig, *, variables: Any = None,
                   eps=None) -> tuple[jax.Array, Any]:
  """One update xi <- P_eps(xi + alpha_k rule(combined gradients)).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given (static).
    xi: [H, W, C] current perturbation.
    opt_state: the step rule's state (from `init_universal`).
    batch: one batch {'image': [B, H, W, C], 'label': [B], 'mask': [B]}, or
      `cfg.grad_batches` of them stacked on a leading axis ([G, B, ...]).
    k: iteration index (traced), for the annealed schedule.
    cfg: universal config (static).
    variables: optional model variables (traced).
    eps: optional override of `cfg.eps` in 0-255 units (traced).

  Returns:
    (xi [H, W, C] inside the eps ball, new opt_state).

  Raises:
    ConfigError: the number of stacked batches differs from `cfg.grad_batches`.
  """
  fn = _resolve(logits_fn, variables)
  eps_unit = _eps_unit(cfg, eps)
  stacked = batch["image"].ndim == xi.ndim + 2
  num = batch["image"].shape[0] if stacked else 1
  if num != cfg.grad_batches:
    raise ConfigError(f"universal_step got {num} batch(es) but grad_batches={cfg.grad_batches}")
  per_batch = jnp.sign if cfg.step_rule == "sign" else (lambda g: g)

  def one(b):
    return per_batch(batch_gradient(fn, xi, b, cfg))

  if not stacked:
    combined = one(batch)
  elif num == 1:
    combined = one(jax.tree.map(lambda v: v[0], batch))
  else:
    # Sequential over the G batches: memory of one batch, not G.
    combined = jnp.mean(lax.map(one, batch), axis=0)
  direction, opt_state = _rule(cfg)[1](combined, opt_state)
  xi = _project(xi + _step_size(cfg, eps_unit, k) * direction, cfg, eps_unit)
  return xi, opt_state


def batch_stream(batches: Iterable[dict] | Callable[[], Iterable[dict]]) -> Iterator[dict]:
  """Endless stream of batches, restarting the source when it runs out.

  Args:
    batches: a re-iterable (list, tf.data / grain dataset) or a zero-argument
      callable returning a fresh iterable; a one-shot iterator (a generator)
      is consumed once.

  Yields:
    Batches, cycling over the source.

  Raises:
    DataError: the source is empty, or a one-shot iterator ran out.
  """
  one_shot = not callable(batches) and iter(batches) is batches
  for epoch in itertools.count():
    source = batches() if callable(batches) else batches
    count = 0
    for batch in source:
      count += 1
      yield batch
    if count == 0:
      raise DataError("universal attack: the batch source is empty" +
                      (" (an exhausted iterator?)" if epoch else ""))
    if one_shot:
      raise DataError(f"universal attack: the batch iterator ran out after {count} batches; "
                      "pass a re-iterable or a callable returning a fresh iterator to cycle")


def universal_perturbation(logits_fn: Callable,
                           batches: Iterable[dict] | Callable[[], Iterable[dict]],
                           rng: jax.Array, cfg: UniversalConfig, image_shape, *,
                           variables: Any = None, eps=None) -> jax.Array:
  """Computes a universal perturbation by K streamed updates (module docstring).

  Only the `grad_batches` batches of the current update are held at a time,
  so the data may be larger than memory. Every update runs the same compiled
  `universal_step` as long as the batches keep one shape (pad and mask a
  ragged last batch).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given; reuse one
      object across calls to reuse the compilation.
    batches: {'image', 'label', 'mask'} dicts; see `batch_stream` for cycling.
    rng: PRNG key (initialisation).
    cfg: universal config.
    image_shape: (H, W, C) of one image.
    variables: optional model variables (traced).
    eps: optional radius in 0-255 units overriding `cfg.eps` (traced, so
      searches over eps share one compilation).

  Returns:
    xi [H, W, C] with ||xi|| <= eps, applied as clip(x + xi, 0, 1).
  """
  eps = jnp.asarray(cfg.eps if eps is None else eps, jnp.float32)
  xi, opt_state = init_universal(rng, cfg, image_shape, eps)
  if cfg.num_iterations == 0:
    return xi
  stream = batch_stream(batches)
  for k in range(cfg.num_iterations):
    group = [next(stream) for _ in range(cfg.grad_batches)]
    batch = group[0] if cfg.grad_batches == 1 else jax.tree.map(
        lambda *v: jnp.stack(v), *group)
    xi, opt_state = universal_step(logits_fn, xi, opt_state, batch, jnp.int32(k), cfg,
                                   variables=variables, eps=eps)
  return xi


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _evaluate_batch(logits_fn, variables, batch, xi, target):
  fn = _resolve(logits_fn, variables)
  mask = _mask(batch)
  y = batch["label"]
  clean = jnp.argmax(fn(batch["image"]), axis=-1)
  adv = jnp.argmax(fn(threat.apply(batch["image"], xi)), axis=-1)

  def total(hit):
    return jnp.sum(hit.astype(jnp.float32) * mask)

  return (total(clean == y), total(adv == y), total(adv != clean), total(adv == target),
          jnp.sum(mask))


def evaluate_universal(logits_fn: Callable, batches: Iterable[dict], xi: jax.Array, *,
                       variables: Any = None,
                       target_class: int | None = None) -> dict[str, float]:
  """Accuracy and fooling ratio with the universal perturbation added (UAT, sec. 3).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given.
    batches: iterable of {'image', 'label', 'mask'} dicts (held-out data).
    xi: [H, W, C] universal perturbation.
    variables: optional model variables (traced).
    target_class: if given, also the fraction predicted as this class.

  Returns:
    {'accuracy': on clip(x + xi, 0, 1); 'clean_accuracy'; 'fooling_ratio': the
     fraction whose predicted class changes; 'misclassification_rate':
     1 - accuracy; 'num_examples'; and 'target_success_rate' if a target is given}.
  """
  target = jnp.int32(-1 if target_class is None else target_class)
  clean = adv = fooled = hits = total = 0.0
  for batch in batches:
    c, a, f, t, n = _evaluate_batch(logits_fn, variables, batch, xi, target)
    clean, adv, fooled, hits, total = (clean + float(c), adv + float(a), fooled + float(f),
                                       hits + float(t), total + float(n))
  total_ = max(total, 1.0)
  result = {"accuracy": adv / total_, "clean_accuracy": clean / total_,
            "fooling_ratio": fooled / total_, "misclassification_rate": 1.0 - adv / total_,
            "num_examples": total}
  if target_class is not None:
    result["target_success_rate"] = hits / total_
  return result


def eps_uni_search(logits_fn: Callable,
                   attack_batches: Iterable[dict] | Callable[[], Iterable[dict]],
                   eval_batches: Iterable[dict], rng: jax.Array,
                   cfg: UniversalConfig | None = None, *, delta: float = 0.75,
                   num_search_steps: int = 10, lower: float = 0.0, upper: float = 255.0,
                   variables: Any = None) -> tuple[dict[str, float], np.ndarray | None]:
  """Binary search for eps_uni(delta), the universal robustness of sec. 5.1-5.2.

  eps_uni(delta) is the smallest L-inf radius at which a universal
  perturbation reaches a misclassification rate of at least delta. As in the
  paper, each probe computes the universal adversary with stochastic PGD on
  one set of data (5000 validation images in mini-batches of m_k = 16 there)
  and measures the rate on held-out data (512 test images there). A probe
  that reaches delta moves the search to the lower half of the interval,
  otherwise to the upper half; the result is the smallest successful probe,
  an upper bound on the true eps_uni. The radius is traced, so the probes
  share one compilation.

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given.
    attack_batches: batches the adversary is computed on, re-iterable or a
      callable returning a fresh iterable (every probe restarts it, so every
      probe sees the same stream).
    eval_batches: held-out batches; materialised once with `list` unless
      callable.
    rng: PRNG key, the same for every probe.
    cfg: universal config whose eps is ignored; default `shared_at_eval_config()`.
      With `cfg.targeted` the rate is the fraction classified as the target
      (the keys keep their names).
    delta: target rate in (0, 1].
    num_search_steps: b, the number of bisection probes (paper: 10).
    lower: left end of the interval (0-255 units).
    upper: right end of the interval (0-255 units).
    variables: optional model variables (traced).

  Returns:
    (metrics, xi). metrics: {'eps_uni': smallest probed eps reaching delta,
    or `upper` if none did; 'found': 1.0 or 0.0; 'misclassification_rate' at
    eps_uni (NaN if not found); 'lower_bound': largest probed eps that failed,
    or `lower`; 'rate_at_lower_bound'; 'clean_misclassification_rate'}.
    xi: the [H, W, C] perturbation found at eps_uni as a numpy array, or None.

  Raises:
    ConfigError: delta outside (0, 1] or an empty interval.
    DataError: no evaluation batches.
  """
  if not 0.0 < delta <= 1.0:
    raise ConfigError(f"eps_uni_search: delta={delta!r} must be in (0, 1]")
  if not 0.0 <= lower < upper:
    raise ConfigError(f"eps_uni_search: need 0 <= lower < upper, got [{lower}, {upper}]")
  cfg = shared_at_eval_config() if cfg is None else cfg
  if callable(eval_batches):
    eval_source = eval_batches
  else:
    held_out = list(eval_batches)
    eval_source = lambda: held_out  # noqa: E731
  first = next(iter(eval_source()), None)
  if first is None:
    raise DataError("eps_uni_search: eval_batches is empty")
  image_shape = tuple(first["image"].shape[1:])
  key = "target_success_rate" if cfg.targeted else "misclassification_rate"
  target = cfg.target_class if cfg.targeted else None

  def evaluate(xi):
    return evaluate_universal(logits_fn, eval_source(), xi, variables=variables,
                              target_class=target)[key]

  def probe(eps):
    xi = universal_perturbation(logits_fn, attack_batches, rng, cfg, image_shape,
                                variables=variables, eps=eps)
    return evaluate(xi), xi

  clean_rate = evaluate(jnp.zeros(image_shape, jnp.float32))
  lo_rate, lo_xi = (clean_rate, None) if lower == 0.0 else probe(lower)
  result = {"clean_misclassification_rate": clean_rate}
  if lo_rate >= delta:
    xi = np.zeros(image_shape, np.float32) if lo_xi is None else np.asarray(lo_xi)
    return ({**result, "eps_uni": lower, "found": 1.0, "misclassification_rate": lo_rate,
             "lower_bound": lower, "rate_at_lower_bound": lo_rate}, xi)
  lo, hi = lower, upper
  best, best_rate, best_xi = None, float("nan"), None
  for _ in range(num_search_steps):
    eps = 0.5 * (lo + hi)
    r, xi = probe(eps)
    if r >= delta:
      best, best_rate, best_xi, hi = eps, r, xi, eps
    else:
      lo, lo_rate = eps, r
  return ({**result, "eps_uni": upper if best is None else best,
           "found": 0.0 if best is None else 1.0, "misclassification_rate": best_rate,
           "lower_bound": lo, "rate_at_lower_bound": lo_rate},
          None if best_xi is None else np.asarray(best_xi))
