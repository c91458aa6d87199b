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

The loop is `advjax.attacks.core.optimize`, shared with the heap and
universal adversaries; `attack` below passes a delta shaped like x and the sum
of per-example losses, so each example follows its own gradient. It is a
`lax.fori_loop`: memory does not grow with the number of steps.

Labels are class indices [batch] or dense maps [batch, H, W]; the task
(`advjax.tasks`, by default the one the labels' rank implies) scores the
attack's success per example (a fraction of pixels for maps) for restart
selection and draws random targets. A `mask` restricts the perturbation to a
region (`threat.ThreatModel`).

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

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax import typed_config
from advjax.attacks import core, diversity, losses, rules, threat
from advjax.errors import ConfigError

# The ascent rules of per-example attacks (the others of `rules.RULES` need no eps ball).
STEP_RULES = ("sign", "l2", "momentum", "optax:adam", "optax:rmsprop")
LABEL_SOURCES = ("true", "predicted")


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
      the restart that fools more (of an example's pixels, for label maps)
      and breaks ties by loss.
    parallel_restarts: run the restarts as one batch (`jax.vmap` over the
      restart keys: restarts x the activation memory of one run) instead of
      one after another in a loop; the result is the same up to float
      rounding. Off by default: on the 2-core CPU, 4 x PGD-10 on the convnet
      at batch 128 took 4.30 s vmapped and 4.11 s looped (`make bench`), so
      the vmap buys nothing there for 4x the memory; it can pay where one
      run leaves an accelerator idle (small batches).
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
  parallel_restarts: bool = False

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
  # An L-inf radius above 255 is the whole box; an L2 radius is a norm over every pixel.
  check(math.isfinite(cfg.eps) and (cfg.norm != "linf" or cfg.eps <= 255), "eps",
        "must be finite, and at most 255 for linf (0-255 pixel units)")
  check(math.isfinite(cfg.step_size), "step_size", "must be finite (0-255 pixel units)")
  check(cfg.eps >= 0, "eps", "must be >= 0 (0-255 pixel units)")
  check(cfg.step_size >= 0, "step_size", "must be >= 0 (0-255 pixel units)")
  check(isinstance(cfg.num_steps, int) and cfg.num_steps >= 0, "num_steps", "must be an int >= 0")
  one_of("init", threat.INITS)
  check(0.0 <= cfg.clean_init_fraction <= 1.0, "clean_init_fraction", "must be in [0, 1]")
  one_of("step_rule", STEP_RULES)
  check(cfg.momentum >= 0, "momentum", "must be >= 0")
  one_of("step_schedule", core.STEP_SCHEDULES)
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
  one_of("restart_select", core.RESTART_SELECTIONS)
  check(isinstance(cfg.parallel_restarts, bool), "parallel_restarts", "must be a bool")


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


def threat_model(cfg: AttackConfig, sizes: Sizes, mask: jax.Array | None = None) -> threat.ThreatModel:
  """The eps ball of `cfg` (optionally restricted to `mask`)."""
  return threat.ThreatModel(cfg.norm, sizes.eps, mask)


def step_sizes(cfg: AttackConfig, sizes: Sizes):
  """alpha_k of `cfg`: constant, or the annealed schedule of sec. 5.2."""
  return core.step_sizes(cfg.step_schedule, step_size=sizes.step_size, eps=sizes.eps,
                         num_steps=cfg.num_steps, beta=cfg.beta, gamma=cfg.gamma)


def ascent_rule(cfg: AttackConfig):
  """The ascent rule of `cfg` (`advjax.attacks.rules`)."""
  return rules.get(cfg.step_rule, norm=cfg.norm, momentum=cfg.momentum)


def optimize_perturbation(objective: Callable[[jax.Array, jax.Array], jax.Array],
                          delta: jax.Array, rng: jax.Array, cfg: AttackConfig, sizes: Sizes,
                          project: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Runs `cfg.num_steps` projected ascent steps of `cfg`'s rule and schedule (`core.optimize`).

  Args:
    objective: `(delta, key) -> scalar` to maximise.
    delta: initial perturbation of any shape `objective` accepts.
    rng: PRNG key for the per-step keys.
    cfg: attack config (step rule, schedule, number of steps).
    sizes: resolved sizes (`resolve_sizes`).
    project: maps a stepped delta back to the feasible set.

  Returns:
    The final perturbation, same shape as `delta`.
  """
  return core.optimize(objective, delta, rng, rule=ascent_rule(cfg), step_size=step_sizes(cfg, sizes),
                       project=project, num_steps=cfg.num_steps)


def attack_labels(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array, cfg: AttackConfig,
                  task: tasks_lib.Task, targets: jax.Array | None = None) -> jax.Array:
  """The labels the attack loss is evaluated on, computed once from the clean input.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, H, W, C] clean images.
    y: [batch] or [batch, H, W] true labels.
    rng: PRNG key for random targets.
    cfg: attack config.
    task: scores labels of y's shape and draws random targets.
    targets: given targets, shaped like y (targeted only); random ones otherwise.

  Returns:
    int32 labels shaped like y: targets, predicted labels, or `y`.
  """
  if cfg.targeted:
    if targets is not None:
      return targets
    num_classes = jax.eval_shape(logits_fn, x).shape[-1]
    return task.random_targets(rng, y, num_classes)
  if cfg.labels == "predicted":
    predicted = losses.predicted_labels(logits_fn(x))
    # Ignored positions of a label map stay ignored.
    return jnp.where(y >= 0, predicted, y)
  return y


def attack_loss(cfg: AttackConfig):
  """The per-example `(logits, labels) -> [batch]` loss that `cfg` names."""
  return losses.get_loss(cfg.loss, cfg.targeted, label_smoothing=cfg.label_smoothing,
                         kappa=cfg.kappa, confidence=cfg.confidence)


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg", "task"))
def attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
           rng: jax.Array, cfg: AttackConfig, eps=None, targets: jax.Array | None = None,
           mask: jax.Array | None = None, task: tasks_lib.Task | None = None) -> jax.Array:
  """Per-example gradient attack (FGSM/BIM/PGD/MI/DI2 by `cfg`).

  Maximises the sum of per-example losses, so each example follows its own
  gradient, with delta kept inside the eps ball (and the mask) and x + delta
  inside [0, 1].

  Args:
    logits_fn: `x -> logits` closure with the parameters bound (see
      `make_logits_fn`); static, so reuse one object to avoid recompiles.
    x: [batch, height, width, channels] clean images in [0, 1].
    y: [batch] class labels or [batch, height, width] label maps (-1 ignored).
    rng: PRNG key; restart r uses `fold_in(rng, r)`.
    cfg: `AttackConfig` (static).
    eps: optional traced override of `cfg.eps`, 0-255 units: a scalar, or
      one radius per example ([batch], a per-example search).
    targets: optional targets shaped like y for targeted attacks.
    mask: optional 1/0 region where pixels may change, broadcastable to x
      (e.g. [batch, height, width, 1]).
    task: static; default `advjax.tasks.for_labels(y)`.

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1].
  """
  task = tasks_lib.for_labels(y) if task is None else task
  if eps is not None and jnp.ndim(eps) == 1:
    eps = jnp.reshape(eps, (-1,) + (1,) * (x.ndim - 1))  # One radius per example.
  sizes = resolve_sizes(cfg, eps)
  ball = threat_model(cfg, sizes, mask)
  k_labels, k_restarts = jax.random.split(rng)
  labels = attack_labels(logits_fn, x, y, k_labels, cfg, task, targets)
  loss_fn = attack_loss(cfg)

  def objective(delta, key):
    x_in = diversity.input_diversity(key, x + delta, cfg.diversity_prob, cfg.diversity_ratio)
    return jnp.sum(loss_fn(logits_fn(x_in), labels))

  def project(delta):
    return ball.project(delta, x)

  def run(r):
    k_init, k_steps = jax.random.split(jax.random.fold_in(k_restarts, r))
    delta = project(ball.init(k_init, x.shape, cfg.init, cfg.clean_init_fraction, x.dtype))
    delta = optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
    x_adv = threat.apply(x, delta)
    logits = logits_fn(x_adv)
    return core.Candidate(x_adv, loss_fn(logits, labels), task.success(logits, y, labels, cfg.targeted))

  return core.best_of_restarts(run, cfg.restarts, cfg.restart_select, parallel=cfg.parallel_restarts)
