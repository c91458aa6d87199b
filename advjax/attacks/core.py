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
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

STEP_SCHEDULES = ("constant", "annealed")
RESTART_SELECTIONS = ("loss", "misclassified")


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
