"""The iterative core every gradient adversary shares: ascent steps, step sizes, restarts.

An adversary maximises an objective J(delta) over a perturbation delta by

  g_k = grad J(delta_k);  d_k, s_k = rule(g_k, s_{k-1});  delta_{k+1} = P(delta_k + alpha_k d_k)

with `rule` an ascent rule (`advjax.attacks.rules`, an optax gradient
transformation), alpha_k from `step_sizes` and P the projection of a threat
model (`advjax.attacks.threat.ThreatModel`). `ascend` is one such update;
`optimize` runs K of them in a `lax.fori_loop`. Per-example PGD, the heap
adversary and the universal adversary call `optimize` (or, streaming data,
`ascend`), and universal adversarial training calls `ascend` once per
training step, so there is one implementation of the update for all of them.

Step sizes are constant, alpha_k = alpha, or the annealed schedule of shared
adversarial training (sec. 5.2), alpha_k = beta eps gamma^k / sum_{j<K} gamma^j,
whose K steps sum to beta eps.

Restarts: an attack run r times from random starts keeps, per example (or per
heap), the strongest result. `keep_stronger` is that selection: by the
attack loss ('loss'), or preferring the run with the larger fraction of
fooled positions and breaking ties by the loss ('misclassified').

`AscentConfig` holds the knobs every iterative adversary shares (threat
model, start, rule, step sizes and count, loss), with one name each: the
per-example `pgd.AttackConfig` and the `universal.UniversalConfig` extend it
with their own fields and defaults.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from advjax import typed_config
from advjax.attacks import losses, rules, threat
from advjax.errors import ConfigError

STEP_SCHEDULES = ("constant", "annealed")
RESTART_SELECTIONS = ("loss", "misclassified")


@dataclasses.dataclass(frozen=True)
class AscentConfig:
  """What every iterative adversary is configured by; frozen and hashable, a valid jit static arg.

  Sizes are in 0-255 pixel units, as the papers state them (eps = 8 means
  8/255 on images in [0, 1]); the attacks convert them once.

  Attributes:
    norm: threat model, 'linf' or 'l2'.
    eps: radius of the ball in 0-255 pixel units.
    step_size: alpha in 0-255 pixel units (constant schedule).
    num_steps: number of gradient steps K (0 returns the start).
    init: the start: 'zero', 'uniform' in the ball (PGD's random start), or
      'mixed' (per-example attacks only: a random fraction starts at zero).
    step_rule: one of `rules.RULES`: 'sign', 'l2', 'momentum' (MI-FGSM),
      'sgd', 'sgd_momentum', 'adam', 'rmsprop'.
    momentum: mu of the 'momentum' and 'sgd_momentum' rules.
    step_schedule: 'constant' (alpha_k = step_size) or 'annealed'
      (alpha_k = beta eps gamma^k / sum_{j<K} gamma^j, shared AT sec. 5.2).
    beta: total step length of the annealed schedule, in multiples of eps.
    gamma: decay of the annealed schedule.
    loss: a name of `losses.LOSS_NAMES` (larger = stronger attack).
    targeted: attack towards targets with the loss' targeted variant.
    label_smoothing: smoothing of cross-entropy targets.
    kappa: threshold of 'clipped_cross_entropy' (default -log 0.2).
  """
  norm: str = "linf"
  eps: float = 8.0
  step_size: float = 2.0
  num_steps: int = 10
  init: str = "zero"
  step_rule: str = "sign"
  momentum: float = 1.0
  step_schedule: str = "constant"
  beta: float = 4.0
  gamma: float = 0.975
  loss: str = "cross_entropy"
  targeted: bool = False
  label_smoothing: float = 0.0
  kappa: float = -math.log(0.2)

  # Names earlier versions used for these fields.
  RENAMED: ClassVar[dict[str, str]] = {"num_iterations": "num_steps", "steps": "num_steps",
                                       "max_iter": "num_steps", "iterations": "num_steps"}

  def __post_init__(self):
    self.check(self.norm in threat.NORMS, "norm", f"must be one of {', '.join(threat.NORMS)}")
    # An L-inf radius above 255 is the whole box; an L2 radius is a norm over every pixel.
    self.check(math.isfinite(self.eps) and self.eps >= 0 and (self.norm != "linf" or self.eps <= 255), "eps",
               "must be finite, >= 0 and at most 255 for linf (0-255 pixel units)")
    self.check(math.isfinite(self.step_size) and self.step_size >= 0, "step_size",
               "must be finite and >= 0 (0-255 pixel units)")
    self.check(isinstance(self.num_steps, int) and self.num_steps >= 0, "num_steps", "must be an int >= 0")
    self.check(self.init in threat.INITS, "init", f"must be one of {', '.join(threat.INITS)}")
    try:
      rules.check(self.step_rule)
    except ConfigError as e:
      self.check(False, "step_rule", str(e))
    self.check(math.isfinite(self.momentum) and self.momentum >= 0, "momentum", "must be finite and >= 0")
    self.check(self.step_schedule in STEP_SCHEDULES, "step_schedule",
               f"must be one of {', '.join(STEP_SCHEDULES)}")
    self.check(math.isfinite(self.beta) and self.beta > 0, "beta", "must be finite and > 0")
    self.check(math.isfinite(self.gamma) and self.gamma > 0, "gamma", "must be finite and > 0")
    self.check(self.loss in losses.LOSS_NAMES, "loss", f"must be one of {', '.join(losses.LOSS_NAMES)}")
    try:
      losses.get_loss(self.loss, self.targeted)
    except ConfigError as e:
      self.check(False, "targeted", str(e))
    self.check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
    self.check(math.isfinite(self.kappa) and self.kappa > 0, "kappa", "must be finite and > 0")

  def check(self, ok: bool, field: str, why: str) -> None:
    """Raises ConfigError naming `field` and its value unless `ok`."""
    if not ok:
      raise ConfigError(f"{field}={getattr(self, field)!r}: {why}")

  @classmethod
  def from_config(cls, config) -> "AscentConfig":
    """Builds the config from a ConfigDict or mapping with fields of the same names (missing ones: the defaults).

    Raises:
      ConfigError: an unknown or renamed field, or a field with a bad type or value.
    """
    return typed_config.from_mapping(cls, config, cls.__name__)

  def rule(self) -> optax.GradientTransformation:
    """The ascent rule (`rules.get`)."""
    return rules.get(self.step_rule, norm=self.norm, momentum=self.momentum)

  def loss_fn(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-example `(logits, labels) -> [batch]` loss that the config names."""
    return losses.get_loss(self.loss, self.targeted, label_smoothing=self.label_smoothing, kappa=self.kappa)

  def step_sizes(self, eps_unit) -> Callable[[Any], Any]:
    """alpha_k on the [0, 1] scale, for a radius `eps_unit` on that scale (may be traced)."""
    return step_sizes(self.step_schedule, step_size=threat.to_unit(self.step_size), eps=eps_unit,
                      num_steps=self.num_steps, beta=self.beta, gamma=self.gamma)


def bind(model_fn: Callable, variables: Any) -> Callable:
  """`model_fn(variables)` when variables are given, else `model_fn` itself.

  Attacks and evaluators take either a plain `x -> logits` closure, or a
  builder `variables -> (x -> logits)` together with traced variables, so a
  new checkpoint does not recompile.
  """
  return model_fn if variables is None else model_fn(variables)


def step_sizes(schedule: str, *, step_size, eps, num_steps: int, beta: float,
               gamma: float) -> Callable[[Any], Any]:
  """alpha_k as a function of the (possibly traced) iteration k.

  Args:
    schedule: 'constant' (alpha_k = step_size) or 'annealed'
      (alpha_k = beta eps gamma^k / sum_{j<K} gamma^j).
    step_size: the constant alpha on the [0, 1] scale.
    eps: the radius on the [0, 1] scale (may be traced).
    num_steps: K, for the normalisation of the annealed schedule.
    beta: total length of the annealed steps in multiples of eps.
    gamma: decay of the annealed schedule.

  Returns:
    `k -> alpha_k`.
  """
  if schedule == "constant":
    return lambda k: step_size
  total = sum(gamma ** j for j in range(max(num_steps, 1)))
  return lambda k: beta * eps * jnp.power(gamma, k) / total


def ascend(delta: jax.Array, grad: jax.Array, state: Any, rule: optax.GradientTransformation,
           step_size, project: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, Any]:
  """One update delta <- P(delta + alpha rule(grad)).

  Args:
    delta: the current perturbation, any shape.
    grad: the gradient of the objective to maximise, same shape.
    state: the rule's state (`rule.init(delta)` before the first step).
    rule: ascent rule.
    step_size: alpha (float or traced scalar).
    project: maps the stepped perturbation back to the feasible set.

  Returns:
    (new delta, new rule state).
  """
  direction, state = rule.update(grad, state, delta)
  return project(delta + step_size * direction), state


def optimize(objective: Callable[[jax.Array, jax.Array], jax.Array], delta: jax.Array, rng: jax.Array, *,
             rule: optax.GradientTransformation, step_size: Callable[[Any], Any],
             project: Callable[[jax.Array], jax.Array], num_steps: int) -> jax.Array:
  """Runs `num_steps` projected ascent steps on `objective` from `delta`.

  Args:
    objective: `(delta, key) -> scalar` to maximise; `key` is fresh per step
      (`fold_in(rng, k)`), for input diversity or other randomness.
    delta: initial perturbation of any shape `objective` accepts.
    rng: PRNG key for the per-step keys.
    rule: ascent rule.
    step_size: `k -> alpha_k` (`step_sizes`).
    project: maps a stepped delta back to the feasible set.
    num_steps: K (static).

  Returns:
    The final perturbation, same shape as `delta`.
  """
  grad_fn = jax.grad(objective)

  def body(k, carry):
    delta, state = carry
    g = grad_fn(delta, jax.random.fold_in(rng, k))
    return ascend(delta, g, state, rule, step_size(k), project)

  # A rolled loop on every backend: the models' convolutions compute their input
  # gradient as a forward convolution (advjax.cpu.convolution), which XLA:CPU
  # runs as fast inside a loop body as in straight-line code, so compile time
  # does not grow with the number of steps.
  delta, _ = lax.fori_loop(0, num_steps, body, (delta, rule.init(delta)))
  return delta


class Candidate(NamedTuple):
  """One run of an attack, scored per unit (an example, or a heap).

  Attributes:
    x_adv: [batch, ...] the adversarial images.
    loss: [units] the attack loss (larger = stronger).
    success: [units] the fraction of positions where the attack reached its goal.
  """
  x_adv: jax.Array
  loss: jax.Array
  success: jax.Array


def keep_stronger(new: Candidate, best: Candidate, select: str, unit_size: int = 1) -> Candidate:
  """Per unit, the stronger of two attack runs.

  Args:
    new: the latest run.
    best: the best so far.
    select: 'loss' keeps the higher loss; 'misclassified' keeps the higher
      success fraction and breaks ties by the loss.
    unit_size: examples per unit (s for heaps, 1 for per-example attacks).

  Returns:
    A Candidate holding, for every unit, the fields of the stronger run.
  """
  if select == "loss":
    take = new.loss > best.loss
  else:
    take = (new.success > best.success) | ((new.success == best.success) & (new.loss > best.loss))
  per_example = take if unit_size == 1 else jnp.repeat(take, unit_size,
                                                        total_repeat_length=new.x_adv.shape[0])
  per_example = per_example.reshape(per_example.shape + (1,) * (new.x_adv.ndim - 1))
  return Candidate(jnp.where(per_example, new.x_adv, best.x_adv), jnp.where(take, new.loss, best.loss),
                   jnp.where(take, new.success, best.success))


def best_of_restarts(run: Callable[[jax.Array], Candidate], restarts: int, select: str,
                     unit_size: int = 1, parallel: bool = False) -> jax.Array:
  """The adversarial images of the strongest of `restarts` runs, per unit.

  Args:
    run: `r -> Candidate` for restart r (a traced int32 scalar).
    restarts: number of runs (static).
    select: see `keep_stronger`.
    unit_size: see `keep_stronger`.
    parallel: run all restarts at once, vmapped over r (restarts x the
      memory of one run), instead of one after another in a loop. The
      strongest is chosen in the same order (restart 0 first, a later one
      replaces it only if strictly stronger), so both give the same result
      up to float rounding.

  Returns:
    [batch, ...] adversarial images.
  """
  if restarts == 1:
    return run(jnp.int32(0)).x_adv
  if parallel:
    runs = jax.vmap(run)(jnp.arange(restarts, dtype=jnp.int32))
    best = jax.tree.map(lambda v: v[0], runs)
    for r in range(1, restarts):
      best = keep_stronger(jax.tree.map(lambda v, r=r: v[r], runs), best, select, unit_size)
    return best.x_adv

  def body(r, best):
    return keep_stronger(run(r), best, select, unit_size)

  return lax.fori_loop(1, restarts, body, run(jnp.int32(0))).x_adv
