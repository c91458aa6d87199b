"""One iterative gradient core; FGSM, BIM, PGD, MI-FGSM and DI2-FGSM are configs of it.

The Xie thesis (ch. 3, fig. 3.2) relates the fast gradient sign family by three
knobs: the number of iterations N, the momentum decay mu and the diversity
probability p. With `AttackConfig`:

  FGSM (eq. 3.2)        num_steps=1, step_size=eps, init='zero'
  I-FGSM / BIM (3.3)    num_steps=N, step_size=alpha, init='zero'
  PGD (Madry et al.)    as BIM with init='uniform' (random start) and restarts
  MI-FGSM (3.4)         step_rule='momentum', momentum=mu
  DI2-FGSM (3.5, 3.6)   diversity_prob=p
  M-DI2-FGSM (3.7)      both; mu = 0 gives DI2-FGSM, p = 0 gives MI-FGSM

Each iteration k is, for a perturbation delta and an objective J(delta) to be
maximised,

  g_k = grad J(delta_k);  d_k = rule(g_k);  delta_{k+1} = P(delta_k + alpha_k d_k)

with `rule` the sign (L-inf steepest ascent), the L2-normalised gradient, MI-FGSM
momentum (g = mu g + grad / ||grad||_1, then sign) or an optax optimiser, P the
projection onto the eps ball (and the image box), and alpha_k constant or the
annealed schedule of shared adversarial training (sec. 5.2):
alpha_k = beta eps gamma^k / sum_{j<K} gamma^j, whose steps sum to beta eps.

`optimize_perturbation` is that loop for any `objective(delta, key) -> scalar`
and any perturbation shape: the per-example `attack` below passes a delta shaped
like x and the sum of per-example losses (so each example gets its own
gradient); a heap adversary passes delta [heaps, 1, H, W, C] broadcast against
x [heaps, s, H, W, C] and the mean loss of each heap. The loop is a
`lax.fori_loop`, so one compile serves every number of steps' worth of memory:
nothing per step is stacked.

Sizes (eps, step_size) are in 0-255 pixel units in configs; `resolve_sizes`
converts them once. Differences to torchattacks 3.5.1 are noted where they
matter: its MIFGSM divides the gradient by mean |grad| instead of ||grad||_1,
which scales g by the constant C*H*W and leaves every sign, hence every
iterate, unchanged; its BIM clips to [max(x - eps, 0), min(x + eps, 1)], which
is our L-inf projection followed by the box.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from advjax.attacks import diversity, losses, threat
from advjax import typed_config
from advjax.errors import ConfigError

INITS = ("zero", "uniform", "mixed")
STEP_RULES = ("sign", "l2", "momentum", "optax:adam", "optax:rmsprop")
SCHEDULES = ("constant", "annealed")
LABEL_SOURCES = ("true", "predicted")
RESTART_SELECTIONS = ("loss", "misclassified")
BN_MODES = ("eval", "batch")
_OPTAX = {"optax:adam": optax.adam, "optax:rmsprop": optax.rmsprop}
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Hyper-parameters of a gradient attack; frozen and hashable, a valid jit static arg.

  Attributes:
    norm: threat model, 'linf' or 'l2'.
    eps: radius of the ball in 0-255 pixel units (8.0 means 8/255).
    step_size: alpha in 0-255 pixel units (constant schedule only).
    num_steps: number of gradient steps K (0 returns the initial point).
    init: 'zero' (BIM, MI/DI2-FGSM), 'uniform' in the ball (PGD random start),
      or 'mixed': a random `clean_init_fraction` of the perturbations starts at
      zero and the rest uniform (feature-denoising training, Xie thesis ch. 4).
    clean_init_fraction: fraction started at zero under init='mixed'.
    step_rule: 'sign', 'l2' (gradient / ||gradient||_2), 'momentum' (MI-FGSM,
      eq. 3.4; sign step for linf, L2-normalised for l2), or 'optax:adam',
      'optax:rmsprop' (optimiser direction at unit learning rate, times alpha_k).
    momentum: decay mu of the 'momentum' rule; 0 gives I-FGSM exactly.
    step_schedule: 'constant' (alpha_k = step_size) or 'annealed'
      (alpha_k = beta eps gamma^k / sum_{j<K} gamma^j).
    beta: total step length of the annealed schedule, in multiples of eps.
    gamma: decay of the annealed schedule.
    diversity_prob: p of DI2-FGSM's input diversity (eq. 3.6).
    diversity_ratio: canvas / input size of the input diversity (330 / 299).
    loss: name in `losses.LOSS_NAMES`.
    targeted: attack towards target classes with the loss' targeted variant.
    labels: 'true' or 'predicted' (argmax of the clean logits, computed once;
      avoids label leaking) for untargeted attacks.
    label_smoothing: smoothing of cross-entropy targets.
    kappa: threshold of 'clipped_cross_entropy' (default -log 0.2).
    confidence: cap of the 'margin' losses, or None.
    restarts: number of random restarts; per example the strongest is kept.
    restart_select: 'loss' keeps the highest final loss; 'misclassified' prefers
      a successful restart and breaks ties by loss.
    bn_mode: BatchNorm during the attack, 'eval' or 'batch'; not read by
      `attack` (which only sees a logits_fn) but by whoever builds the
      logits_fn with `advjax.attacks.make_logits_fn`.
  """
  norm: str = "linf"
  eps: float = 8.0
  step_size: float = 2.0
  num_steps: int = 10
  init: str = "zero"
  clean_init_fraction: float = 0.2
  step_rule: str = "sign"
  momentum: float = 1.0
  step_schedule: str = "constant"
  beta: float = 4.0
  gamma: float = 0.975
  diversity_prob: float = 0.0
  diversity_ratio: float = 330.0 / 299.0
  loss: str = "cross_entropy"
  targeted: bool = False
  labels: str = "true"
  label_smoothing: float = 0.0
  kappa: float = -math.log(0.2)
  confidence: float | None = None
  restarts: int = 1
  restart_select: str = "loss"
  bn_mode: str = "eval"

  def __post_init__(self):
    _validate(self)

  @classmethod
  def from_config(cls, config) -> "AttackConfig":
    """Builds a config from a ConfigDict or dict with fields of the same names.

    Args:
      config: `ml_collections.ConfigDict` or mapping; missing fields keep
        their defaults.

    Returns:
      The validated `AttackConfig`.

    Raises:
      ConfigError: an unknown field, or a field with a bad type or value.
    """
    return typed_config.from_mapping(cls, config, "attack config")


def _validate(cfg: AttackConfig) -> None:
  def check(ok, field, why):
    if not ok:
      raise ConfigError(f"attack config field {field!r}={getattr(cfg, field)!r}: {why}")

  def one_of(field, options):
    check(getattr(cfg, field) in options, field, f"must be one of {', '.join(options)}")

  one_of("norm", threat.NORMS)
  check(cfg.eps >= 0, "eps", "must be >= 0 (0-255 pixel units)")
  check(cfg.step_size >= 0, "step_size", "must be >= 0 (0-255 pixel units)")
  check(isinstance(cfg.num_steps, int) and cfg.num_steps >= 0, "num_steps", "must be an int >= 0")
  one_of("init", INITS)
  check(0.0 <= cfg.clean_init_fraction <= 1.0, "clean_init_fraction", "must be in [0, 1]")
  one_of("step_rule", STEP_RULES)
  check(cfg.momentum >= 0, "momentum", "must be >= 0")
  one_of("step_schedule", SCHEDULES)
  check(cfg.beta > 0, "beta", "must be > 0")
  check(cfg.gamma > 0, "gamma", "must be > 0")
  check(0.0 <= cfg.diversity_prob <= 1.0, "diversity_prob", "must be in [0, 1]")
  check(cfg.diversity_ratio > 1.0, "diversity_ratio", "must be > 1")
  one_of("loss", losses.LOSS_NAMES)
  try:
    losses.get_loss(cfg.loss, cfg.targeted)
  except ConfigError as e:
    check(False, "targeted", str(e))
  one_of("labels", LABEL_SOURCES)
  check(0.0 <= cfg.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
  check(cfg.kappa > 0, "kappa", "must be > 0")
  check(cfg.confidence is None or cfg.confidence >= 0, "confidence", "must be None or >= 0")
  check(isinstance(cfg.restarts, int) and cfg.restarts >= 1, "restarts", "must be an int >= 1")
  one_of("restart_select", RESTART_SELECTIONS)
  one_of("bn_mode", BN_MODES)


def _kurakin_steps(eps: float) -> int:
  """N = min(eps + 4, 1.25 eps) of Kurakin et al., used by the thesis (sec. 3.4.1)."""
  return max(1, int(min(eps + 4, 1.25 * eps)))


def fgsm(eps: float = 8.0, **overrides) -> AttackConfig:
  """FGSM, eq. 3.2: one sign step of size eps from the clean image."""
  return AttackConfig(**{**dict(eps=eps, step_size=eps, num_steps=1, init="zero"), **overrides})


def bim(eps: float = 8.0, step_size: float = 1.0, num_steps: int | None = None,
        **overrides) -> AttackConfig:
  """BIM / I-FGSM, eq. 3.3; num_steps defaults to min(eps + 4, 1.25 eps)."""
  steps = _kurakin_steps(eps) if num_steps is None else num_steps
  return AttackConfig(**{**dict(eps=eps, step_size=step_size, num_steps=steps, init="zero"),
                         **overrides})


def pgd(eps: float = 8.0, step_size: float = 2.0, num_steps: int = 10, restarts: int = 1,
        **overrides) -> AttackConfig:
  """PGD (Madry et al.): BIM from a uniform random start, with optional restarts.

  With norm='l2' (given in `overrides`) the step rule defaults to 'l2'.
  """
  rule = "l2" if overrides.get("norm") == "l2" else "sign"
  return AttackConfig(**{**dict(eps=eps, step_size=step_size, num_steps=num_steps,
                                init="uniform", restarts=restarts, step_rule=rule), **overrides})


def mi_fgsm(eps: float = 15.0, step_size: float = 1.0, num_steps: int | None = None,
            momentum: float = 1.0, **overrides) -> AttackConfig:
  """MI-FGSM, eq. 3.4 (thesis defaults eps=15, alpha=1, mu=1)."""
  return bim(eps, step_size, num_steps, step_rule="momentum", momentum=momentum, **overrides)


def di2_fgsm(eps: float = 15.0, step_size: float = 1.0, num_steps: int | None = None,
             diversity_prob: float = 0.5, **overrides) -> AttackConfig:
  """DI2-FGSM, eq. 3.5 (thesis default p = 0.5)."""
  return bim(eps, step_size, num_steps, diversity_prob=diversity_prob, **overrides)


def m_di2_fgsm(eps: float = 15.0, step_size: float = 1.0, num_steps: int | None = None,
               momentum: float = 1.0, diversity_prob: float = 0.5, **overrides) -> AttackConfig:
  """M-DI2-FGSM, eq. 3.7: momentum and input diversity together."""
  return bim(eps, step_size, num_steps, step_rule="momentum", momentum=momentum,
             diversity_prob=diversity_prob, **overrides)


class Sizes(NamedTuple):
  """Step sizes on the [0, 1] scale; `eps` may be a traced scalar."""
  eps: Any
  step_size: Any


def resolve_sizes(cfg: AttackConfig, eps=None) -> Sizes:
  """The single conversion of 0-255 sizes to the image scale.

  Args:
    cfg: attack config.
    eps: optional override of `cfg.eps` in 0-255 units, possibly traced (the
      eps_adv binary search varies it without recompiling).

  Returns:
    `Sizes` with eps and the constant step size divided by 255.
  """
  eps_255 = cfg.eps if eps is None else eps
  return Sizes(threat.to_unit(eps_255), threat.to_unit(cfg.step_size))


def step_size_at(cfg: AttackConfig, sizes: Sizes, k):
  """alpha_k for iteration k (a traced int inside the loop)."""
  if cfg.step_schedule == "constant":
    return sizes.step_size
  total = sum(cfg.gamma ** j for j in range(max(cfg.num_steps, 1)))
  return cfg.beta * sizes.eps * jnp.power(cfg.gamma, k) / total


def _step_rule(cfg: AttackConfig):
  """Returns (init(delta) -> state, direction(grad, state) -> (d, state))."""
  def steepest(g):
    if cfg.norm == "linf":
      return jnp.sign(g)
    return g / jnp.maximum(threat.per_perturbation_norm(g, 2), _TINY)

  if cfg.step_rule == "sign":
    return (lambda d: (), lambda g, s: (jnp.sign(g), s))
  if cfg.step_rule == "l2":
    return (lambda d: (),
            lambda g, s: (g / jnp.maximum(threat.per_perturbation_norm(g, 2), _TINY), s))
  if cfg.step_rule == "momentum":
    def update(g, acc):
      # The L1 norm per perturbation makes mu comparable across iterations (eq. 3.4).
      acc = cfg.momentum * acc + g / jnp.maximum(threat.per_perturbation_norm(g, 1), _TINY)
      return steepest(acc), acc
    return (jnp.zeros_like, update)
  opt = _OPTAX[cfg.step_rule](learning_rate=1.0)

  def opt_update(g, state):
    # optax minimises; feeding -g makes its update an ascent direction.
    updates, state = opt.update(-g, state)
    return updates, state
  return (opt.init, opt_update)


def init_perturbation(rng: jax.Array, shape, cfg: AttackConfig, sizes: Sizes,
                      dtype=jnp.float32) -> jax.Array:
  """Initial delta of the given shape [n, ...] following `cfg.init`.

  Args:
    rng: PRNG key.
    shape: perturbation shape; the first axis indexes perturbations.
    cfg: attack config.
    sizes: resolved sizes.
    dtype: float dtype.

  Returns:
    [n, ...] initial perturbations inside the ball (not yet box-clipped).
  """
  if cfg.init == "zero":
    return jnp.zeros(shape, dtype)
  k_init, k_mix = jax.random.split(rng)
  delta = threat.random_init(k_init, shape, cfg.norm, sizes.eps, dtype)
  if cfg.init == "mixed":
    n = shape[0]
    num_clean = int(round(cfg.clean_init_fraction * n))
    rank = jax.random.permutation(k_mix, n)
    clean = (rank < num_clean).reshape((n,) + (1,) * (len(shape) - 1))
    delta = jnp.where(clean, 0.0, delta)
  return delta


def optimize_perturbation(objective: Callable[[jax.Array, jax.Array], jax.Array],
                          delta: jax.Array, rng: jax.Array, cfg: AttackConfig, sizes: Sizes,
                          project: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Runs `cfg.num_steps` projected ascent steps on `objective` from `delta`.

  The generic core shared by per-example, heap and universal adversaries.

  Args:
    objective: `(delta, key) -> scalar` to maximise; `key` is fresh per step
      (for input diversity or other randomness).
    delta: initial perturbation [n, ...] of any shape `objective` accepts.
    rng: PRNG key for the per-step keys.
    cfg: attack config (step rule, schedule, number of steps).
    sizes: resolved sizes (`resolve_sizes`).
    project: maps a stepped delta back to the feasible set, e.g. the eps ball
      and, for per-example deltas, the image box.

  Returns:
    The final perturbation, same shape as `delta`.
  """
  init_state, direction = _step_rule(cfg)
  grad_fn = jax.grad(objective)

  def body(k, carry):
    delta, state = carry
    g = grad_fn(delta, jax.random.fold_in(rng, k))
    d, state = direction(g, state)
    delta = project(delta + step_size_at(cfg, sizes, k) * d)
    return delta, state

  delta, _ = lax.fori_loop(0, cfg.num_steps, body, (delta, init_state(delta)),
                           unroll=_unroll(cfg.num_steps))
  return delta


# XLA:CPU (jaxlib 0.10.2) runs a network's convolutions inside a while-loop
# body about 3x slower than the same convolutions in straight-line code
# (ResNet-20, batch 8: 0.67 s vs 0.21 s per PGD step; see BENCHMARKS.md),
# and a partly unrolled loop is still a loop. So on CPU short attacks are
# unrolled completely: the same arithmetic, one compile per step count, and
# compile time growing with the steps, hence the bound. Accelerators keep the loop.
CPU_UNROLL_MAX_STEPS = 16


def _unroll(num_steps: int) -> bool:
  return jax.default_backend() == "cpu" and 0 < num_steps <= CPU_UNROLL_MAX_STEPS


def attack_labels(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array, cfg: AttackConfig,
                  targets: jax.Array | None = None) -> jax.Array:
  """The labels the attack loss is evaluated on, computed once from the clean input.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, H, W, C] clean images.
    y: [batch] true labels.
    rng: PRNG key for random targets.
    cfg: attack config.
    targets: [batch] given targets (targeted only); random ones != y otherwise.

  Returns:
    [batch] int32: targets, predicted labels, or `y`.
  """
  if cfg.targeted:
    if targets is not None:
      return targets
    num_classes = jax.eval_shape(logits_fn, x).shape[-1]
    return losses.random_targets(rng, y, num_classes)
  if cfg.labels == "predicted":
    return losses.predicted_labels(logits_fn(x))
  return y


def attack_loss(cfg: AttackConfig):
  """The per-example `(logits, labels) -> [batch]` loss that `cfg` names."""
  return losses.get_loss(cfg.loss, cfg.targeted, label_smoothing=cfg.label_smoothing,
                         kappa=cfg.kappa, confidence=cfg.confidence)


def _success(logits, y, labels, cfg):
  pred = jnp.argmax(logits, axis=-1)
  return pred == labels if cfg.targeted else pred != y


@functools.partial(jax.jit, static_argnames=("logits_fn", "cfg"))
def attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
           rng: jax.Array, cfg: AttackConfig, eps=None,
           targets: jax.Array | None = None) -> jax.Array:
  """Per-example gradient attack (FGSM/BIM/PGD/MI/DI2 by `cfg`).

  Maximises the sum of per-example losses, so each example follows its own
  gradient, with delta kept inside the eps ball and x + delta inside [0, 1].

  Args:
    logits_fn: `x -> logits` closure with the parameters bound (see
      `make_logits_fn`); static, so reuse one object to avoid recompiles.
    x: [batch, height, width, channels] clean images in [0, 1].
    y: [batch] integer true labels.
    rng: PRNG key; restart r uses `fold_in(rng, r)`.
    cfg: `AttackConfig` (static).
    eps: optional traced override of `cfg.eps`, 0-255 units.
    targets: optional [batch] target classes for targeted attacks.

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1].
  """
  sizes = resolve_sizes(cfg, eps)
  k_labels, k_restarts = jax.random.split(rng)
  labels = attack_labels(logits_fn, x, y, k_labels, cfg, targets)
  loss_fn = attack_loss(cfg)

  def objective(delta, key):
    x_in = diversity.input_diversity(key, x + delta, cfg.diversity_prob, cfg.diversity_ratio)
    return jnp.sum(loss_fn(logits_fn(x_in), labels))

  def project(delta):
    return threat.clip_to_box(x, threat.project(delta, cfg.norm, sizes.eps))

  def run(r):
    k_init, k_steps = jax.random.split(jax.random.fold_in(k_restarts, r))
    delta = project(init_perturbation(k_init, x.shape, cfg, sizes, x.dtype))
    delta = optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
    x_adv = threat.apply(x, delta)
    logits = logits_fn(x_adv)
    return x_adv, loss_fn(logits, labels), _success(logits, y, labels, cfg)

  best = run(0)
  if cfg.restarts == 1:
    return best[0]

  def better(new, old):
    if cfg.restart_select == "loss":
      return new[1] > old[1]
    return (new[2] & ~old[2]) | ((new[2] == old[2]) & (new[1] > old[1]))

  def body(r, best):
    new = run(r)
    take = better(new, best)
    return (jnp.where(take.reshape(take.shape + (1,) * (x.ndim - 1)), new[0], best[0]),
            jnp.where(take, new[1], best[1]), jnp.where(take, new[2], best[2]))

  return lax.fori_loop(1, cfg.restarts, body, best)[0]
