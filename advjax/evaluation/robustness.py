"""Jit-compiled robustness evaluators: clean accuracy, accuracy under attack, eps_adv.

Batches are dicts {'image': [B, H, W, C] in [0, 1], 'label': [B], 'mask': [B]}
with mask 1 for real examples and 0 for padding, so a ragged last batch can be
padded to a fixed shape and compiled once. Each evaluator runs one jitted
function per batch and returns a dict of Python floats.

The model enters either as a `logits_fn` closure, or as a builder
`logits_fn(variables) -> (x -> logits)` together with `variables=`: then the
variables are traced arguments and evaluating a new checkpoint does not
recompile (pass the same builder object each time; it is a static argument).

`eps_adv_search` estimates the adversarial robustness of shared adversarial
training, sec. 5.1-5.2: eps_adv(delta), the smallest L-inf radius (0-255 units)
at which the attack reaches a misclassification rate of at least delta. It is a
binary search of b iterations on [0, 255]; each probe runs K steps with the
annealed step sizes alpha_k = beta eps gamma^k / sum_j gamma^j (paper defaults
b = 10, K = 200, gamma = 0.975, beta = 4); a probe that reaches delta moves the
search to the lower half, otherwise to the upper half, and the result is the
smallest successful probe. The radius is a traced argument, so the b probes
share one compilation. The result is an upper bound on the true eps_adv.
"""

import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError


def _resolve(logits_fn, variables):
  return logits_fn if variables is None else logits_fn(variables)


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _clean_batch(logits_fn, variables, batch):
  fn = _resolve(logits_fn, variables)
  mask = batch["mask"].astype(jnp.float32)
  correct = (jnp.argmax(fn(batch["image"]), axis=-1) == batch["label"]).astype(jnp.float32)
  return jnp.sum(correct * mask), jnp.sum(mask)


@functools.partial(jax.jit, static_argnames=("logits_fn", "cfg", "attack_fn"))
def _attack_batch(logits_fn, variables, batch, rng, cfg, attack_fn, eps):
  fn = _resolve(logits_fn, variables)
  x, y = batch["image"], batch["label"]
  mask = batch["mask"].astype(jnp.float32)
  x_adv = attack_fn(fn, x, y, rng, cfg, eps=eps)
  clean = (jnp.argmax(fn(x), axis=-1) == y).astype(jnp.float32)
  adv = (jnp.argmax(fn(x_adv), axis=-1) == y).astype(jnp.float32)
  return jnp.sum(clean * mask), jnp.sum(adv * mask), jnp.sum(mask)


def clean_accuracy(logits_fn: Callable, batches: Iterable[dict], *,
                   variables: Any = None) -> dict[str, float]:
  """Accuracy on unperturbed inputs.

  Args:
    logits_fn: `x -> logits`, or a builder `variables -> (x -> logits)` when
      `variables` is given.
    batches: iterable of {'image', 'label', 'mask'} dicts.
    variables: optional model variables (traced).

  Returns:
    {'accuracy': float, 'num_examples': float}.
  """
  correct = total = 0.0
  for batch in batches:
    c, n = _clean_batch(logits_fn, variables, batch)
    correct += float(c)
    total += float(n)
  return {"accuracy": correct / max(total, 1.0), "num_examples": total}


def accuracy_under_attack(logits_fn: Callable, batches: Iterable[dict],
                          cfg: pgd_lib.AttackConfig, rng: jax.Array, *, variables: Any = None,
                          eps: float | None = None,
                          attack_fn: Callable = pgd_lib.attack) -> dict[str, float]:
  """Accuracy on adversarial inputs; batch i is attacked with `fold_in(rng, i)`.

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given.
    batches: iterable of {'image', 'label', 'mask'} dicts.
    cfg: attack config (static).
    rng: PRNG key.
    variables: optional model variables (traced).
    eps: optional radius in 0-255 units overriding `cfg.eps`, traced.
    attack_fn: `(logits_fn, x, y, rng, cfg, eps=) -> x_adv`, default the
      per-example `advjax.attacks.pgd.attack`.

  Returns:
    {'accuracy', 'clean_accuracy', 'misclassification_rate', 'num_examples'}.
  """
  eps = None if eps is None else jnp.asarray(eps, jnp.float32)
  clean = adv = total = 0.0
  for i, batch in enumerate(batches):
    c, a, n = _attack_batch(logits_fn, variables, batch, jax.random.fold_in(rng, i), cfg,
                            attack_fn, eps)
    clean += float(c)
    adv += float(a)
    total += float(n)
  total = max(total, 1.0)
  return {"accuracy": adv / total, "clean_accuracy": clean / total,
          "misclassification_rate": 1.0 - adv / total, "num_examples": total}


def eps_adv_config(num_steps: int = 200, beta: float = 4.0, gamma: float = 0.975,
                   **overrides) -> pgd_lib.AttackConfig:
  """The annealed L-inf PGD of sec. 5.2 (eps is set by the search)."""
  return pgd_lib.AttackConfig(**{**dict(
      norm="linf", eps=255.0, num_steps=num_steps, init="zero", step_rule="sign",
      step_schedule="annealed", beta=beta, gamma=gamma), **overrides})


def eps_adv_search(logits_fn: Callable, batches: Iterable[dict], rng: jax.Array,
                   cfg: pgd_lib.AttackConfig | None = None, *, delta: float = 0.5,
                   num_search_steps: int = 10, lower: float = 0.0, upper: float = 255.0,
                   variables: Any = None,
                   attack_fn: Callable = pgd_lib.attack) -> dict[str, float]:
  """Binary search for eps_adv(delta) (shared adversarial training, sec. 5.2).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given.
    batches: {'image', 'label', 'mask'} dicts; materialised once, every probe
      sees the same examples.
    rng: PRNG key, the same for every probe so the search is monotone in eps
      up to the attack's own behaviour.
    cfg: attack config whose `eps` is ignored; default `eps_adv_config()`.
    delta: target misclassification rate in (0, 1].
    num_search_steps: b, the number of bisection probes.
    lower: left end of the search interval (0-255 units).
    upper: right end of the search interval (0-255 units).
    variables: optional model variables (traced).
    attack_fn: as in `accuracy_under_attack`.

  Returns:
    {'eps_adv': smallest probed eps reaching delta, or `upper` if none did;
     'found': 1.0 or 0.0; 'misclassification_rate': rate at eps_adv (NaN if
     not found); 'lower_bound': largest probed eps that failed, or `lower`;
     'rate_at_lower_bound'; 'clean_misclassification_rate'}.

  Raises:
    ConfigError: delta outside (0, 1] or an empty interval.
  """
  if not 0.0 < delta <= 1.0:
    raise ConfigError(f"eps_adv_search: delta={delta!r} must be in (0, 1]")
  if not 0.0 <= lower < upper:
    raise ConfigError(f"eps_adv_search: need 0 <= lower < upper, got [{lower}, {upper}]")
  cfg = eps_adv_config() if cfg is None else cfg
  batches = list(batches)

  def rate(eps):
    return accuracy_under_attack(logits_fn, batches, cfg, rng, variables=variables, eps=eps,
                                 attack_fn=attack_fn)["misclassification_rate"]

  clean_rate = rate(lower)
  result = {"clean_misclassification_rate": clean_rate}
  if clean_rate >= delta:
    return {**result, "eps_adv": lower, "found": 1.0, "misclassification_rate": clean_rate,
            "lower_bound": lower, "rate_at_lower_bound": clean_rate}
  lo, hi, lo_rate = lower, upper, clean_rate
  best, best_rate = None, float("nan")
  for _ in range(num_search_steps):
    eps = 0.5 * (lo + hi)
    r = rate(eps)
    if r >= delta:
      best, best_rate, hi = eps, r, eps
    else:
      lo, lo_rate = eps, r
  return {**result, "eps_adv": upper if best is None else best,
          "found": 0.0 if best is None else 1.0, "misclassification_rate": best_rate,
          "lower_bound": lo, "rate_at_lower_bound": lo_rate}
