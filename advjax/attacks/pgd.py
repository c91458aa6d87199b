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
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax.attacks import core, diversity, losses, threat

LABEL_SOURCES = ("true", "predicted")


@dataclasses.dataclass(frozen=True)
class AttackConfig(core.AscentConfig):
  """Hyper-parameters of a per-example gradient attack: `core.AscentConfig` and these.

  Attributes:
    clean_init_fraction: under init='mixed', the random fraction of the
      perturbations that starts at zero, the rest uniform in the ball
      (feature-denoising training, Xie thesis sec. 4.5).
    diversity_prob: p of DI2-FGSM's input diversity (eq. 3.6).
    diversity_ratio: canvas / input size of the input diversity (330 / 299).
    labels: 'true' or 'predicted' (argmax of the clean logits, computed once;
      avoids label leaking) for untargeted attacks.
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
  clean_init_fraction: float = 0.2
  diversity_prob: float = 0.0
  diversity_ratio: float = 330.0 / 299.0
  labels: str = "true"
  confidence: float | None = None
  restarts: int = 1
  restart_select: str = "loss"
  parallel_restarts: bool = False

  def __post_init__(self):
    super().__post_init__()
    self.check(0.0 <= self.clean_init_fraction <= 1.0, "clean_init_fraction", "must be in [0, 1]")
    self.check(0.0 <= self.diversity_prob <= 1.0, "diversity_prob", "must be in [0, 1]")
    self.check(math.isfinite(self.diversity_ratio) and self.diversity_ratio > 1.0, "diversity_ratio",
               "must be finite and > 1")
    self.check(self.labels in LABEL_SOURCES, "labels", f"must be one of {', '.join(LABEL_SOURCES)}")
    self.check(self.confidence is None or self.confidence >= 0, "confidence", "must be None or >= 0")
    self.check(isinstance(self.restarts, int) and self.restarts >= 1, "restarts", "must be an int >= 1")
    self.check(self.restart_select in core.RESTART_SELECTIONS, "restart_select",
               f"must be one of {', '.join(core.RESTART_SELECTIONS)}")
    self.check(isinstance(self.parallel_restarts, bool), "parallel_restarts", "must be a bool")

  def loss_fn(self):
    """The per-example `(logits, labels) -> [batch]` loss, with the margin losses' `confidence`."""
    return losses.get_loss(self.loss, self.targeted, label_smoothing=self.label_smoothing, kappa=self.kappa,
                           confidence=self.confidence)


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


def optimize_perturbation(objective: Callable[[jax.Array, jax.Array], jax.Array],
                          delta: jax.Array, rng: jax.Array, cfg: core.AscentConfig, sizes: Sizes,
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
  return core.optimize(objective, delta, rng, rule=cfg.rule(), step_size=cfg.step_sizes(sizes.eps),
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


def projected_ascent(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, labels: jax.Array,
                     rng: jax.Array, cfg: AttackConfig, task: tasks_lib.Task, *, heap_size: int = 1, eps=None,
                     mask: jax.Array | None = None) -> jax.Array:
  """The restarts of projected gradient ascent that `attack` (heaps of 1) and `heap.heap_attack` share.

  The batch is viewed as heaps of `heap_size` consecutive examples, each
  heap with one perturbation [heaps, H, W, C] broadcast over its members;
  the objective is the sum over heaps of the heap's mean loss, so with heaps
  of 1 every example follows its own gradient. A perturbation of one example
  folds the box into itself after every step (`threat.clip_to_box`); a
  shared one is projected onto the ball only and clipped where it is added,
  so a member whose pixel is clipped passes no gradient to it there.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, H, W, C] clean images in [0, 1]; batch a multiple of `heap_size`.
    y: [batch] or [batch, H, W] true labels (scored by `task`).
    labels: the labels the loss is evaluated on (targets, predictions or y).
    rng: PRNG key; restart r uses `fold_in(rng, r)`.
    cfg: attack config.
    task: scores success for the restart selection.
    heap_size: s, examples per perturbation.
    eps: optional traced radius in 0-255 units (a scalar, or [batch] with heaps of 1).
    mask: optional region where pixels may change (heaps of 1).

  Returns:
    [batch, H, W, C] adversarial images in [0, 1].
  """
  s = heap_size
  num_heaps = x.shape[0] // s
  if eps is not None and jnp.ndim(eps) == 1:
    eps = jnp.reshape(eps, (-1,) + (1,) * (x.ndim - 1))  # One radius per example.
  sizes = resolve_sizes(cfg, eps)
  ball = threat_model(cfg, sizes, mask)
  loss_fn = cfg.loss_fn()
  x_heaps = x.reshape((num_heaps, s) + x.shape[1:])
  delta_shape = (num_heaps,) + x.shape[1:]

  def perturbed(delta):
    if s == 1:
      return x + delta  # delta already holds the box (see `project`).
    # The model must see the clipped image it will be attacked with.
    return threat.apply(x_heaps, delta[:, None]).reshape(x.shape)

  def objective(delta, key):
    x_in = diversity.input_diversity(key, perturbed(delta), cfg.diversity_prob, cfg.diversity_ratio)
    # Sum over heaps of the heap's mean loss; each heap's delta only sees its own.
    return jnp.sum(loss_fn(logits_fn(x_in), labels)) / s

  def project(delta):
    # Folding the box into delta is only possible when delta belongs to one example.
    return ball.project(delta, x if s == 1 else None)

  def heap_mean(v):
    return v if s == 1 else jnp.mean(v.reshape(num_heaps, s).astype(jnp.float32), axis=1)

  def run(r):
    k_init, k_steps = jax.random.split(jax.random.fold_in(rng, r))
    delta = project(ball.init(k_init, delta_shape, cfg.init, cfg.clean_init_fraction, x.dtype))
    delta = optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
    x_adv = threat.apply(x, delta) if s == 1 else threat.apply(x_heaps, delta[:, None]).reshape(x.shape)
    logits = logits_fn(x_adv)
    return core.Candidate(x_adv, heap_mean(loss_fn(logits, labels)),
                          heap_mean(task.success(logits, y, labels, cfg.targeted)))

  return core.best_of_restarts(run, cfg.restarts, cfg.restart_select, unit_size=s,
                               parallel=cfg.parallel_restarts)


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
  k_labels, k_restarts = jax.random.split(rng)
  labels = attack_labels(logits_fn, x, y, k_labels, cfg, task, targets)
  return projected_ascent(logits_fn, x, y, labels, k_restarts, cfg, task, eps=eps, mask=mask)
