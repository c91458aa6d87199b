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

Evaluators (`config.evals` types): 'clean', 'pgd' (metrics under PGD-k at
each eps) and 'eps_adv'; each takes its attack as a nested `attack` block
(`pgd.AttackConfig`'s fields, `--config.evals.pgd.attack.num_steps=100`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax.attacks import core
from advjax.attacks import pgd as pgd_lib
from advjax.evaluation import base, search
from advjax.tasks import labels as labels_lib
from advjax.errors import ConfigError


@functools.partial(compilation.jit, static_argnames=("model_fn", "cfg", "task", "attack_fn"))
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
  clean, adv = jax.device_get((clean, adv))
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


@functools.partial(compilation.jit, static_argnames=("model_fn", "cfg", "task", "num_steps", "attack_fn"))
def _per_example_minima(model_fn, variables, batch, rng, cfg, task, num_steps, lower, upper, threshold, attack_fn):
  fn = core.bind(model_fn, variables)
  x, y = batch["image"], batch["label"]

  def fooled(images):
    return task.success(fn(images), y, y, False) >= threshold

  clean = fooled(x)
  full = jnp.ones(y.shape[:1], jnp.float32)

  def probe(_, carry):
    lo, hi, best, found = carry
    mid = 0.5 * (lo + hi)
    hit = fooled(attack_fn(fn, x, y, rng, cfg, eps=mid, task=task))
    return jnp.where(hit, lo, mid), jnp.where(hit, mid, hi), jnp.where(hit, mid, best), found | hit

  carry = (full * lower, full * upper, full * upper, jnp.zeros(y.shape[:1], bool))
  _, _, best, found = jax.lax.fori_loop(0, num_steps, probe, carry)
  return jnp.where(clean, lower, best), clean | found


def per_example_eps(model_fn: Callable, batches: Iterable[dict], rng: jax.Array,
                    cfg: pgd_lib.AttackConfig | None = None, *, num_steps: int = 10, lower: float = 0.0,
                    upper: float = 255.0, threshold: float = 0.5, task: tasks_lib.Task | None = None,
                    variables: Any = None, attack_fn: Callable = pgd_lib.attack) -> tuple[np.ndarray, np.ndarray]:
  """Each example's smallest successful radius, from one batched bisection (every example its own bracket).

  Each of the b probes attacks every example at the midpoint of its own
  interval [lo_i, hi_i] (a per-example eps), and moves that interval to the
  lower half if the attack succeeded on it (its success fraction, of pixels
  for label maps, reaches `threshold`; 0/1 for classes), else to the upper
  half. Batch i uses `fold_in(rng, i)` for every probe, and the whole search
  of a batch is one compiled loop, with no host round trip between probes.

  With success monotone in eps, the global misclassification rate at eps is
  the fraction of examples whose minimum is at most eps, so these minima give
  the accuracy-versus-eps curve and eps_adv(delta) for every delta at once:
  eps_adv(delta) is the delta-quantile of the minima (`eps_at_rate`). The
  global search of `eps_adv_search` gives the same radius when the attack at
  one shared eps succeeds exactly on the examples whose minimum is below it;
  both are upper bounds of the true radii, and the per-example one is never
  looser on an example, since each example's bracket is refined for it alone.

  Args:
    model_fn: `x -> logits`, or a builder when `variables` is given.
    batches: {'image', 'label', 'mask'} dicts.
    rng: PRNG key.
    cfg: untargeted attack config whose eps is ignored; default `eps_adv_config()`.
    num_steps: b, probes per example (the resolution is (upper - lower) / 2^b).
    lower: left end of every interval (0-255 units).
    upper: right end of every interval.
    threshold: success fraction that counts as fooled.
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).
    attack_fn: as in `attacked_metrics`.

  Returns:
    (minima [N] in 0-255 units, found [N] bool) for the N real examples, in
    order; an example never fooled has its minimum at `upper` and found False.

  Raises:
    ConfigError: a targeted attack (its success is measured on drawn targets).
  """
  cfg = eps_adv_config() if cfg is None else cfg
  if cfg.targeted:
    raise ConfigError("per_example_eps: the search needs an untargeted attack")
  minima, found = [], []
  for i, batch in enumerate(batches):
    task = base.task_for(task, model_fn, variables, batch)
    m, f = _per_example_minima(model_fn, variables, batch, jax.random.fold_in(rng, i), cfg, task, num_steps,
                               jnp.float32(lower), jnp.float32(upper), jnp.float32(threshold), attack_fn)
    real = np.asarray(batch["mask"]) > 0
    minima.append(np.asarray(m)[real])
    found.append(np.asarray(f)[real])
  return np.concatenate(minima), np.concatenate(found)


def eps_at_rate(minima: np.ndarray, found: np.ndarray, rate: float, upper: float = 255.0) -> tuple[float, bool]:
  """The smallest radius at which a fraction `rate` of the examples is fooled, from per-example minima.

  Returns:
    (eps, found): the ceil(rate N)-th smallest minimum, or (`upper`, False)
    if fewer than that many examples were ever fooled.
  """
  need = int(np.ceil(rate * len(minima)))
  fooled = np.sort(minima[found])
  if need == 0:
    return 0.0, True
  if len(fooled) < need:
    return float(upper), False
  return float(fooled[need - 1]), True


class Clean(base.Evaluator):
  """'clean': the task's metrics on the held-out data."""

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    yield from base.clean_metrics(self.ctx.model_fn, self.ctx.held_out(), task=self.ctx.task,
                                  variables=variables).items()


def at_radius(cfg: pgd_lib.AttackConfig, eps: float) -> pgd_lib.AttackConfig:
  """`cfg` at radius `eps` (0-255 units); a step size of 0 becomes 2.5 eps / num_steps (Madry et al.)."""
  step_size = cfg.step_size or 2.5 * eps / max(cfg.num_steps, 1)
  return dataclasses.replace(cfg, eps=float(eps), step_size=float(step_size))


class PGD(base.Evaluator):
  """'pgd': metrics under PGD-k at each eps (Madry et al.; L-inf with a random start by default).

  Yields one entry per radius, 'eps<value>' -> the task's metrics under the
  attack (top-1 accuracy whatever the target for targeted attacks).
  """

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      eps: radii in 0-255 units.
      attack: the attack (`pgd.AttackConfig`), its eps set per radius and a
        step_size of 0 meaning 2.5 * eps / num_steps; default PGD-40 with a
        random start, restarts chosen by misclassification.
      max_examples: attack only the first this many held-out examples; 0 = all.
    """
    eps: tuple = ()
    attack: pgd_lib.AttackConfig = pgd_lib.AttackConfig(num_steps=40, step_size=0.0, init="uniform",
                                                        restart_select="misclassified")
    max_examples: int = 0

    RENAMED: ClassVar[dict[str, str]] = {"steps": "attack.num_steps", "step_size": "attack.step_size",
                                         "restarts": "attack.restarts", "targeted": "attack.targeted"}

    def __post_init__(self):
      if not all(isinstance(e, (int, float)) and 0 < e <= 255 for e in self.eps):
        raise ConfigError(f"pgd evaluator: eps values {self.eps!r} must be numbers in (0, 255]")
      if self.max_examples < 0:
        raise ConfigError(f"pgd evaluator: max_examples={self.max_examples!r} must be >= 0 (0 = all)")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    rng = self.ctx.key(self.name)
    for eps in self.args.eps:
      batches = base.first_examples(self.ctx.held_out(), self.args.max_examples)
      metrics = attacked_metrics(self.ctx.model_fn, batches, at_radius(self.args.attack, eps), rng,
                                 task=self.ctx.task, variables=variables)
      yield f"eps{eps:g}", metrics["adversarial"]


class EpsAdv(base.Evaluator):
  """'eps_adv': eps_adv(delta) of shared adversarial training (sec. 5.2), by bisection.

  With `per_example`, one batched bisection gives every example's minimal
  radius (`per_example_eps`); eps_adv(rate) is then their rate-quantile, and
  the evaluator also yields eps_adv at every delta of `curve_rates` and the
  accuracy at each radius of `curve_eps`.
  """

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      rate: delta, the misclassification rate to reach.
      search_steps: b, bisection probes on [0, 255].
      attack: the attack of each probe (its eps set by the search); default
        the paper's K = 200 sign steps with the annealed step sizes
        (beta = 4, gamma = 0.975) from a zero start (`eps_adv_config`).
      max_examples: search on the first this many held-out examples; 0 = all.
      ignore_class: label maps only: a class whose pixels neither the attack
        nor the rate counts (e.g. the canvases' background, 0); -1 none.
      per_example: one batched bisection per example (see the class docstring).
      curve_rates: with per_example, the deltas of the eps_adv curve.
      curve_eps: with per_example, the radii of the accuracy curve.
    """
    rate: float = 0.5
    search_steps: int = 10
    attack: pgd_lib.AttackConfig = eps_adv_config()
    max_examples: int = 0
    ignore_class: int = -1
    per_example: bool = False
    curve_rates: tuple = (0.1, 0.25, 0.5, 0.75, 0.9)
    curve_eps: tuple = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0)

    RENAMED: ClassVar[dict[str, str]] = {"attack_steps": "attack.num_steps", "beta": "attack.beta",
                                         "gamma": "attack.gamma"}

    def __post_init__(self):
      if not 0 < self.rate <= 1:
        raise ConfigError(f"eps_adv evaluator: rate={self.rate!r} must be in (0, 1]")
      if self.search_steps < 1 or self.attack.num_steps < 1:
        raise ConfigError("eps_adv evaluator: search_steps and attack.num_steps must be >= 1")
      if self.max_examples < 0:
        raise ConfigError(f"eps_adv evaluator: max_examples={self.max_examples!r} must be >= 0")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    cfg = a.attack
    batches = [{**b, "label": labels_lib.ignore_class(b["label"], a.ignore_class)}
               for b in base.first_examples(self.ctx.held_out(), a.max_examples)]
    yield "target_rate", a.rate
    if not a.per_example:
      result = eps_adv_search(self.ctx.model_fn, batches, self.ctx.key(self.name), cfg,
                              target_rate=a.rate, num_steps=a.search_steps, task=self.ctx.task, variables=variables)
      yield from result.values().items()
      return
    minima, found = per_example_eps(self.ctx.model_fn, batches, self.ctx.key(self.name), cfg,
                                    num_steps=a.search_steps, task=self.ctx.task, variables=variables)
    eps, ok = eps_at_rate(minima, found, a.rate)
    yield "eps", eps
    yield "found", ok
    yield "by_rate", {f"{r:g}": eps_at_rate(minima, found, r)[0] for r in a.curve_rates}
    yield "accuracy_at_eps", {f"{e:g}": float(np.mean(~(found & (minima <= e)))) for e in a.curve_eps}
    yield "median_minimum", float(np.median(np.where(found, minima, np.inf)))
