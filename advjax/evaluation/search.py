"""Bisection for the smallest radius at which an attack reaches a target rate.

Both robustness measures of shared adversarial training (sec. 5.1-5.2) are
such radii: eps_adv(delta) for the per-example attack and eps_uni(delta) for
the universal one, where delta (`target_rate` here) is the misclassification
rate to reach. `bisect` runs the paper's b-step binary search on
[lower, upper] (0-255 units): a probe whose rate reaches the target moves the
search to the lower half, otherwise to the upper half, and the result is the
smallest successful probe, an upper bound on the true radius. Probes are
black boxes `eps -> (rate, artifact)` (the artifact is, for instance, the
universal perturbation found), so the same search serves every attack.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from advjax.errors import ConfigError


@dataclasses.dataclass
class SearchResult:
  """The outcome of `bisect`.

  Attributes:
    eps: the smallest probed radius whose rate reached the target, or `upper`.
    found: whether any probe reached it.
    rate: the rate at `eps` (NaN if not found).
    lower_bound: the largest probed radius that failed, or `lower`.
    rate_at_lower_bound: its rate.
    clean_rate: the rate with no perturbation.
    artifact: the successful probe's artifact at `eps` (None if not found or none).
  """
  eps: float
  found: bool
  rate: float
  lower_bound: float
  rate_at_lower_bound: float
  clean_rate: float
  artifact: Any = None

  def values(self) -> dict[str, Any]:
    """The JSON-ready fields (the artifact left out)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "artifact"}


def bisect(probe: Callable[[float], tuple[float, Any]], *, target_rate: float, clean_rate: float,
           num_steps: int, lower: float = 0.0, upper: float = 255.0,
           clean_artifact: Any = None) -> SearchResult:
  """b-step binary search for the smallest eps with probe(eps) >= target_rate.

  Args:
    probe: `eps -> (rate, artifact)` for a radius in 0-255 units.
    target_rate: delta in (0, 1].
    clean_rate: the rate at eps = 0 (measured without an attack by the caller).
    num_steps: b, the number of bisection probes.
    lower: left end of the interval; probed first unless it is 0.
    upper: right end of the interval.
    clean_artifact: the artifact to report when eps = 0 already succeeds.

  Returns:
    A SearchResult.

  Raises:
    ConfigError: target_rate outside (0, 1] or an empty interval.
  """
  if not 0.0 < target_rate <= 1.0:
    raise ConfigError(f"search: target rate {target_rate!r} must be in (0, 1]")
  if not 0.0 <= lower < upper:
    raise ConfigError(f"search: need 0 <= lower < upper, got [{lower}, {upper}]")
  lo_rate, lo_artifact = (clean_rate, clean_artifact) if lower == 0.0 else probe(lower)
  if lo_rate >= target_rate:
    return SearchResult(lower, True, lo_rate, lower, lo_rate, clean_rate, lo_artifact)
  lo, hi = lower, upper
  best, best_rate, best_artifact = None, float("nan"), None
  for _ in range(num_steps):
    eps = 0.5 * (lo + hi)
    rate, artifact = probe(eps)
    if rate >= target_rate:
      best, best_rate, best_artifact, hi = eps, rate, artifact, eps
    else:
      lo, lo_rate = eps, rate
  return SearchResult(upper if best is None else best, best is not None, best_rate, lo, lo_rate, clean_rate,
                      best_artifact)
