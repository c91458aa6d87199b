"""Activations by name: the registry `ACTIVATIONS` and the smooth activations of SAT.

Models never name a concrete activation. They hold its *name*
(`activation='silu'`, a string a config can override from the command line)
and build it where it is used:

    x = activations.get_activation(self.activation)(x)

`ACTIVATIONS` maps a name to a zero-argument *factory*, so each use site
gets a fresh callable: for a fixed function (relu, softplus, ...) the factory
returns that function; for a learnable activation (SmoothReLU, whose alpha is
trained) it returns a new `nn.Module`, which linen auto-names inside the
enclosing compact method, so every use site owns its own parameters. Adding
an activation is one `ACTIVATIONS.register` call; model files are untouched.

Names may carry arguments after a colon (`advjax.registry.parse_name`):
'elu:0.5', 'celu:1.5', 'parametric_softplus:10', 'smooth_relu:400' (initial
alpha), 'relu_softplus_grad:10'. The smooth activations are those of smooth
adversarial training (Xie thesis ch. 5): parametric softplus (eq. 5.2),
SmoothReLU with a learnable alpha (eq. 5.4), ELU and CELU (eqs. 5.6-5.8),
plus the diagnostic 'relu_softplus_grad', ReLU forward with parametric
softplus' derivative backward (sec. 5.3, table 5.1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.registry import Registry

Array = jax.Array
Activation = Callable[[Array], Array]
ActivationFactory = Callable[..., Activation]

ACTIVATIONS = Registry("activation")


def register_activation(name: str, factory: ActivationFactory) -> None:
  """Adds an activation to the registry.

  Args:
    name: the registry name used in configs.
    factory: callable taking the name's arguments (strings) and returning the
      activation for one use site: a function `[...] -> [...]`, or a new
      `nn.Module` instance when the activation has parameters (it must then
      be called inside a compact method, which is where models call
      `get_activation`).
  """
  ACTIVATIONS.register(name, factory)


def _stateless(fn: Activation) -> ActivationFactory:
  return lambda: fn


register_activation("relu", _stateless(nn.relu))
register_activation("softplus", _stateless(nn.softplus))
register_activation("silu", _stateless(nn.silu))
# Exact (erf) GELU, the PyTorch default, rather than JAX's tanh approximation.
register_activation("gelu", _stateless(lambda x: nn.gelu(x, approximate=False)))
register_activation("tanh", _stateless(jnp.tanh))


# Smooth activations of smooth adversarial training (Xie thesis, ch. 5).

# alpha = 10 makes parametric softplus close to ReLU (thesis, sec. 5.3).
PARAMETRIC_SOFTPLUS_ALPHA = 10.0
# SmoothReLU's alpha starts large so that early gradients do not vanish (sec. 5.4).
SMOOTH_RELU_INIT_ALPHA = 400.0
# Floor on the learned alpha: keeps 1 / alpha finite however far SGD pushes it.
SMOOTH_RELU_MIN_ALPHA = 1e-4


def parametric_softplus(x: Array, alpha: float = PARAMETRIC_SOFTPLUS_ALPHA) -> Array:
  """f(alpha, x) = log(1 + exp(alpha x)) / alpha (eq. 5.2); derivative sigmoid(alpha x) (eq. 5.3)."""
  return nn.softplus(alpha * x) / alpha


def _parametric_softplus(alpha: str = str(PARAMETRIC_SOFTPLUS_ALPHA)) -> Activation:
  a = float(alpha)
  if a <= 0:
    raise ValueError("alpha must be positive")
  return lambda x: parametric_softplus(x, a)


def _elu(alpha: str = "1.0") -> Activation:
  # ELU's derivative jumps at 0 unless alpha = 1 (eq. 5.6): the non-smooth case of sec. 5.4.
  a = float(alpha)
  return lambda x: nn.elu(x, alpha=a)


def _celu(alpha: str = "1.0") -> Activation:
  # CELU (eq. 5.7) is continuously differentiable for every alpha > 0 (eq. 5.8).
  a = float(alpha)
  if a <= 0:
    raise ValueError("alpha must be positive")
  return lambda x: nn.celu(x, alpha=a)


def _softplus_inverse(y: float) -> float:
  """The x with softplus(x) = y, stable for large y."""
  return y + math.log(-math.expm1(-y))


class SmoothReLU(nn.Module):
  """SmoothReLU(x, alpha) = x - log(alpha x + 1) / alpha for x >= 0, else 0 (eq. 5.4).

  Continuously differentiable for every alpha > 0, with derivative
  alpha x / (1 + alpha x) on x >= 0 (eq. 5.5); it tends to ReLU as alpha
  grows. alpha is one learnable scalar per use site, shared by all channels,
  stored as `raw_alpha` with alpha = softplus(raw_alpha) + SMOOTH_RELU_MIN_ALPHA:
  positive by construction whatever the updates, and for large alpha
  (softplus'(raw) = sigmoid(raw) ~ 1) trained as if alpha itself were the
  parameter.

  Attributes:
    init_alpha: alpha at initialisation (400 in the thesis).
  """

  init_alpha: float = SMOOTH_RELU_INIT_ALPHA

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: any shape -> same shape and dtype."""
    raw_init = _softplus_inverse(self.init_alpha - SMOOTH_RELU_MIN_ALPHA)
    raw = self.param("raw_alpha", lambda _: jnp.asarray(raw_init, jnp.float32))
    alpha = self.alpha_from_raw(raw)
    xp = nn.relu(x.astype(jnp.float32))
    # log1p keeps small alpha * x accurate, where log(1 + alpha x) / alpha -> x.
    return (xp - jnp.log1p(alpha * xp) / alpha).astype(x.dtype)

  @staticmethod
  def alpha_from_raw(raw: Array) -> Array:
    """The positive alpha that the stored `raw_alpha` stands for."""
    return nn.softplus(raw) + SMOOTH_RELU_MIN_ALPHA


def _smooth_relu(init_alpha: str = str(SMOOTH_RELU_INIT_ALPHA)) -> Activation:
  a = float(init_alpha)
  if a <= SMOOTH_RELU_MIN_ALPHA:
    raise ValueError(f"initial alpha must exceed {SMOOTH_RELU_MIN_ALPHA}")
  return SmoothReLU(init_alpha=a)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def relu_softplus_grad(x: Array, alpha: float) -> Array:
  """ReLU in the forward pass, parametric softplus' derivative in the backward pass.

  The diagnostic of thesis sec. 5.3 (table 5.1): inference is unchanged, but
  every gradient through this activation uses sigmoid(alpha x) (eq. 5.3)
  instead of ReLU's step.
  """
  return nn.relu(x)


def _relu_softplus_grad_fwd(x, alpha):
  return nn.relu(x), x


def _relu_softplus_grad_bwd(alpha, x, g):
  return (g * jax.nn.sigmoid(alpha * x).astype(g.dtype),)


relu_softplus_grad.defvjp(_relu_softplus_grad_fwd, _relu_softplus_grad_bwd)


def _relu_softplus_grad(alpha: str = str(PARAMETRIC_SOFTPLUS_ALPHA)) -> Activation:
  a = float(alpha)
  if a <= 0:
    raise ValueError("alpha must be positive")
  return lambda x: relu_softplus_grad(x, a)


register_activation("parametric_softplus", _parametric_softplus)
register_activation("elu", _elu)
register_activation("celu", _celu)
register_activation("smooth_relu", _smooth_relu)
register_activation("relu_softplus_grad", _relu_softplus_grad)


def get_activation(name: str) -> Activation:
  """Builds the activation `name` for one use site.

  Args:
    name: a key of `ACTIVATIONS`, optionally with arguments after a colon
      ('elu:0.5', 'parametric_softplus:10', 'smooth_relu:400').

  Returns:
    An elementwise callable `x -> act(x)` preserving shape and dtype.

  Raises:
    ConfigError: if `name` is not registered or its arguments are bad.
  """
  return ACTIVATIONS.build(name)


def check_activation(name: str) -> None:
  """Raises ConfigError unless `name` (with its arguments) builds an activation."""
  get_activation(name)
