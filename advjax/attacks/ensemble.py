"""Attacking an ensemble through fused logits (Xie thesis, eq. 3.8).

Following Dong et al., the thesis attacks K models at once by fusing their
logits, l(X) = sum_k w_k l_k(X), and running any attack on the fused model.
`ensemble_logits_fn` returns such a fused `logits_fn`, so every attack in this
package works on ensembles unchanged.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from advjax.errors import ConfigError


def ensemble_logits_fn(logits_fns: Sequence[Callable[[jax.Array], jax.Array]],
                       weights: Sequence[float] | None = None) -> Callable[[jax.Array], jax.Array]:
  """Fuses models by a weighted sum of their logits.

  Args:
    logits_fns: K closures `x -> [batch, classes]` over the same classes.
    weights: K ensemble weights w_k; uniform 1/K if None (the thesis uses
      1/7.25 for seven models and 0.25/7.25 for the eighth).

  Returns:
    `x -> sum_k w_k l_k(x)`, float32 [batch, classes].

  Raises:
    ConfigError: no models, or a weight count that does not match.
  """
  fns = tuple(logits_fns)
  if not fns:
    raise ConfigError("ensemble: at least one logits_fn is needed")
  if weights is None:
    weights = (1.0 / len(fns),) * len(fns)
  weights = tuple(float(w) for w in weights)
  if len(weights) != len(fns):
    raise ConfigError(f"ensemble: {len(weights)} weights for {len(fns)} models")

  def fused(x):
    return sum(w * fn(x).astype(jnp.float32) for w, fn in zip(weights, fns))

  return fused
