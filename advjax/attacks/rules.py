"""Ascent rules: how a gradient becomes a step, as optax gradient transformations.

Every iterative adversary in advjax (per-example PGD and its FGSM family, the
heap adversary, the universal adversary, the perturbation player of universal
adversarial training) updates a perturbation delta by

  d_k, state = rule.update(g_k, state);   delta_{k+1} = P(delta_k + alpha_k d_k)

(`core.ascend`), where g_k is the gradient of the objective to *maximise*,
alpha_k the step size and P the projection of the threat model. A rule is an
`optax.GradientTransformation` mapping a gradient to an ascent direction of
unit scale, so the rules compose with optax's own transformations and keep
their state (momentum, Adam moments) the optax way. Norms are taken per
perturbation, over every axis but the first, so one rule serves a batch of
per-example perturbations [batch, H, W, C], heap perturbations [heaps, H, W, C]
and a universal one [1, H, W, C] alike.

  sign          sign(g): L-inf steepest ascent (FGSM, BIM, PGD, S-PGD; the
                'fgsm' rule of universal adversarial training, eq. 6)
  l2            g / ||g||_2: L2 steepest ascent
  momentum      MI-FGSM (Xie thesis eq. 3.4): acc = mu acc + g / ||g||_1, then
                the steepest direction of acc (sign for L-inf, L2-normalised for L2)
  sgd           g itself (UAT eq. 7, the universal adversary's SGD)
  sgd_momentum  heavy ball: v = mu v + g (momentum SGD of UAT's algorithm 2)
  adam          optax's Adam direction at unit learning rate (UAT's Adam rule)
  rmsprop       optax's RMSProp direction at unit learning rate

These names are the one vocabulary of every adversary, evaluator and
objective (`step_rule` fields): a per-example attack, a universal one and the
perturbation player of universal adversarial training all take them. Names
used by earlier versions or by the papers ('fgsm' and 'linf' for the sign,
'optax:adam') are refused with a message naming the rule they mean.

Because optax optimisers descend, `ascent(tx)` feeds them the negated
gradient; the `sign`, `l2` and `sgd` rules are stateless.
"""

import jax
import jax.numpy as jnp
import optax

from advjax.attacks.threat import per_perturbation_norm
from advjax.errors import ConfigError, unknown_name

RULES = ("sign", "l2", "momentum", "sgd", "sgd_momentum", "adam", "rmsprop")
# Earlier or paper names -> the rule they mean.
RENAMED = {"fgsm": "sign", "linf": "sign", "optax:adam": "adam", "optax:rmsprop": "rmsprop"}
_TINY = 1e-12


def _stateless(fn) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(fn, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def sign() -> optax.GradientTransformation:
  """g -> sign(g)."""
  return _stateless(jnp.sign)


def normalize(order: int) -> optax.GradientTransformation:
  """g -> g / ||g||_order, the norm taken per perturbation (leading axis)."""
  return _stateless(lambda g: g / jnp.maximum(per_perturbation_norm(g, order), _TINY))


def steepest(norm: str) -> optax.GradientTransformation:
  """The steepest-ascent direction of a threat model's norm: sign for 'linf', g / ||g||_2 for 'l2'."""
  return sign() if norm == "linf" else normalize(2)


def ascent(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """A descent optimiser turned into an ascent rule by feeding it -g."""
  def update(updates, state, params=None):
    return tx.update(jax.tree.map(jnp.negative, updates), state, params)
  return optax.GradientTransformation(tx.init, update)


def check(name: str) -> None:
  """Raises ConfigError unless `name` is a rule of `RULES` (an old name is told its new one)."""
  if name in RENAMED:
    raise ConfigError(f"ascent rule {name!r} is now called {RENAMED[name]!r}")
  if name not in RULES:
    raise unknown_name("ascent rule", name, RULES)


def get(name: str, *, norm: str = "linf", momentum: float = 1.0) -> optax.GradientTransformation:
  """Resolves a rule name from a config.

  Args:
    name: one of `RULES`.
    norm: the threat model's norm, for the steepest direction of 'momentum'.
    momentum: mu of 'momentum' and 'sgd_momentum'.

  Returns:
    An optax.GradientTransformation from gradients to ascent directions.

  Raises:
    ConfigError: unknown name.
  """
  check(name)
  if name == "sign":
    return sign()
  if name == "l2":
    return normalize(2)
  if name == "momentum":
    # The L1 normalisation makes mu comparable across iterations (eq. 3.4).
    return optax.chain(normalize(1), optax.trace(decay=momentum), steepest(norm))
  if name == "sgd":
    return optax.identity()
  if name == "sgd_momentum":
    return optax.trace(decay=momentum)
  if name == "adam":
    return ascent(optax.adam(learning_rate=1.0))
  return ascent(optax.rmsprop(learning_rate=1.0))
