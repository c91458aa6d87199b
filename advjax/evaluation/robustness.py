"""Jit-compiled robustness evaluation: clean metrics, metrics under attack, eps_adv.

Batches are dicts {'image': [B, H, W, C] in [0, 1], 'label': [B] or [B, H, W],
'mask': [B]} with mask 1 for real examples and 0 for padding, so a ragged last
batch can be padded to a fixed shape and compiled once. Metrics are the task's
(`advjax.tasks`): top-1 accuracy for class labels, pixel accuracy and mean IoU
for label maps.

The model enters either as a `logits_fn` closure, or as a builder
`logits_fn(variables) -> (x -> logits)` together with `variables=`: then the
variables are traced arguments and evaluating a new checkpoint does not
recompile (pass the same builder object each time; it is a static argument).

`eps_adv_search` estimates the adversarial robustness of shared adversarial
training, sec. 5.1-5.2: eps_adv(delta), the smallest L-inf radius (0-255 units)
at which the attack reaches a misclassification rate of at least delta (for
label maps: a pixel error rate). It is the b-step bisection of
`advjax.evaluation.search` on [0, 255]; each probe runs K steps with the
annealed step sizes alpha_k = beta eps gamma^k / sum_j gamma^j (paper defaults
b = 10, K = 200, gamma = 0.975, beta = 4). The radius is a traced argument, so
the b probes share one compilation. The result is an upper bound on the true
eps_adv.

Evaluators (`config.evals` types): 'clean', 'pgd' (metrics under L-inf PGD-k
at each eps) and 'eps_adv'.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from advjax import tasks as tasks_lib
from advjax.attacks import core
from advjax.attacks import pgd as pgd_lib
from advjax.evaluation import base, search
from advjax.errors import ConfigError


@functools.partial(jax.jit, static_argnames=("model_fn", "cfg", "task", "attack_fn"))
def _attacked_sums(model_fn, variables, batch, rng, cfg, task, attack_fn, eps):
  fn = core.bind(model_fn, variables)
  x, y, mask = batch["image"], batch["label"], batch["mask"]
  x_adv = attack_fn(fn, x, y, rng, cfg, eps=eps, task=task)
  return task.metric_sums(fn(x), y, mask), task.metric_sums(fn(x_adv), y, mask)


def attacked_metrics(model_fn: Callable, batches: Iterable[dict], cfg: pgd_lib.AttackConfig, rng: jax.Array, *,
                     task: tasks_lib.Task | None = None, variables: Any = None, eps: float | None = None,
                     attack_fn: Callable = pgd_lib.attack) -> dict[str, dict[str, Any]]:
  """The task's metrics on clean and on adversarial inputs; batch i is attacked with `fold_in(rng, i)`.

  Args:
    model_fn: `x -> logits`, or a builder when `variables` is given.
    batches: iterable of {'image', 'label', 'mask'} dicts.
    cfg: attack config (static).
    rng: PRNG key.
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).
    eps: optional radius in 0-255 units overriding `cfg.eps`, traced.
    attack_fn: `(logits_fn, x, y, rng, cfg, eps=, task=) -> x_adv`, default the
      per-example `advjax.attacks.pgd.attack`.

  Returns:
    {'clean': metrics, 'adversarial': metrics}; a targeted attack is scored
    against the true labels (accuracy whatever the target).
  """
  eps = None if eps is None else jnp.asarray(eps, jnp.float32)
  clean = adv = None
  for i, batch in enumerate(batches):
    task = base.task_for(task, model_fn, variables, batch)
    c, a = _attacked_sums(model_fn, variables, batch, jax.random.fold_in(rng, i), cfg, task, attack_fn, eps)
    clean, adv = base.add_sums(clean, c), base.add_sums(adv, a)
  if clean is None:
    return {"clean": {}, "adversarial": {}}
  return {"clean": task.metric_values(clean), "adversarial": task.metric_values(adv)}


def eps_adv_config(num_steps: int = 200, beta: float = 4.0, gamma: float = 0.975,
                   **overrides) -> pgd_lib.AttackConfig:
  """The annealed L-inf PGD of sec. 5.2 (eps is set by the search)."""
  return pgd_lib.AttackConfig(**{**dict(
      norm="linf", eps=255.0, num_steps=num_steps, init="zero", step_rule="sign",
      step_schedule="annealed", beta=beta, gamma=gamma), **overrides})


def eps_adv_search(model_fn: Callable, batches: Iterable[dict], rng: jax.Array,
                   cfg: pgd_lib.AttackConfig | None = None, *, target_rate: float = 0.5,
                   num_steps: int = 10, lower: float = 0.0, upper: float = 255.0,
                   task: tasks_lib.Task | None = None, variables: Any = None,
                   attack_fn: Callable = pgd_lib.attack) -> search.SearchResult:
  """Binary search for eps_adv(delta) (shared adversarial training, sec. 5.2).

  Args:
    model_fn: `x -> logits`, or a builder when `variables` is given.
    batches: {'image', 'label', 'mask'} dicts; materialised once, every probe
      sees the same examples.
    rng: PRNG key, the same for every probe so the search is monotone in eps
      up to the attack's own behaviour.
    cfg: attack config whose `eps` is ignored; default `eps_adv_config()`.
    target_rate: delta, the misclassification (pixel error) rate in (0, 1] to reach.
    num_steps: b, the number of bisection probes.
    lower: left end of the search interval (0-255 units).
    upper: right end of the search interval (0-255 units).
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).
    attack_fn: as in `attacked_metrics`.

  Returns:
    The `search.SearchResult` (eps = eps_adv).
  """
  cfg = eps_adv_config() if cfg is None else cfg
  batches = list(batches)
  if not batches:
    raise ConfigError("eps_adv_search: no batches to evaluate")
  task = base.task_for(task, model_fn, variables, batches[0])

  def probe(eps):
    metrics = attacked_metrics(model_fn, batches, cfg, rng, task=task, variables=variables, eps=eps,
                               attack_fn=attack_fn)
    return task.error_rate(metrics["adversarial"]), None

  clean_rate = task.error_rate(base.clean_metrics(model_fn, batches, task=task, variables=variables))
  return search.bisect(probe, target_rate=target_rate, clean_rate=clean_rate, num_steps=num_steps,
                       lower=lower, upper=upper)


class Clean(base.Evaluator):
  """'clean': the task's metrics on the held-out data."""

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    yield from base.clean_metrics(self.ctx.model_fn, self.ctx.held_out(), task=self.ctx.task,
                                  variables=variables).items()


class PGD(base.Evaluator):
  """'pgd': metrics under L-inf PGD-k with a random start at each eps (Madry et al.).

  Yields one entry per radius, 'eps<value>' -> the task's metrics under the
  attack (top-1 accuracy whatever the target for targeted attacks).
  """

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      eps: radii in 0-255 units.
      steps: k, PGD iterations.
      step_size: 0-255 units; 0 means 2.5 * eps / steps (Madry et al.).
      restarts: random restarts, the strongest kept per example.
      targeted: toward a random wrong class (a relabelled map for segmentation).
    """
    eps: tuple = ()
    steps: int = 40
    step_size: float = 0.0
    restarts: int = 1
    targeted: bool = False

    def __post_init__(self):
      if not all(isinstance(e, (int, float)) and 0 < e <= 255 for e in self.eps):
        raise ConfigError(f"pgd evaluator: eps values {self.eps!r} must be numbers in (0, 255]")

  def attack_config(self, eps: float) -> pgd_lib.AttackConfig:
    """The evaluation PGD-k attack at radius `eps` (0-255 units)."""
    a = self.args
    step_size = a.step_size or 2.5 * eps / a.steps
    return pgd_lib.AttackConfig(norm="linf", eps=float(eps), step_size=float(step_size), num_steps=a.steps,
                                init="uniform", restarts=a.restarts, targeted=a.targeted,
                                restart_select="misclassified")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    rng = self.ctx.key(self.name)
    for eps in self.args.eps:
      metrics = attacked_metrics(self.ctx.model_fn, self.ctx.held_out(), self.attack_config(eps), rng,
                                 task=self.ctx.task, variables=variables)
      yield f"eps{eps:g}", metrics["adversarial"]


class EpsAdv(base.Evaluator):
  """'eps_adv': eps_adv(delta) of shared adversarial training (sec. 5.2), by bisection."""

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      rate: delta, the misclassification rate to reach.
      search_steps: b, bisection probes on [0, 255].
      attack_steps: K, PGD steps of each probe (annealed step size).
      beta: total step length of the annealed schedule in multiples of eps.
      gamma: decay of the annealed schedule.
    """
    rate: float = 0.5
    search_steps: int = 10
    attack_steps: int = 200
    beta: float = 4.0
    gamma: float = 0.975

    def __post_init__(self):
      if not 0 < self.rate <= 1:
        raise ConfigError(f"eps_adv evaluator: rate={self.rate!r} must be in (0, 1]")
      if self.search_steps < 1 or self.attack_steps < 1:
        raise ConfigError("eps_adv evaluator: search_steps and attack_steps must be >= 1")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    result = eps_adv_search(self.ctx.model_fn, self.ctx.held_out(), self.ctx.key(self.name),
                            eps_adv_config(a.attack_steps, a.beta, a.gamma), target_rate=a.rate,
                            num_steps=a.search_steps, task=self.ctx.task, variables=variables)
    yield "target_rate", a.rate
    yield from result.values().items()
