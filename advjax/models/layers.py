"""Building blocks shared by every model: activations, normalisations, convs.

Models never name a concrete activation or normalisation layer. They hold the
*names* (`activation='silu'`, `norm='groupnorm'`, plain strings that a config
can override from the command line) and resolve them here, at the place where
the layer is used:

    x = make_norm(self.norm, use_running_average=not use_batch_stats,
                  dtype=dtype, name="bn1")(x)
    x = get_activation(self.activation)(x)

Two registries make this work.

Activations. `ACTIVATIONS` maps a name to a zero-argument *factory*. Calling
`get_activation(name)` calls the factory, so each use site gets a fresh
callable: for a fixed function (relu, softplus, ...) the factory returns that
function; for a learnable activation (e.g. a parametric softplus whose
sharpness beta is trained, as in smooth adversarial training, Xie et al. 2020)
the factory returns a new `nn.Module`, which linen then auto-names inside the
enclosing compact method, so every use site owns its own parameters. Adding
such an activation is one `register_activation` call; model files are untouched.

Normalisations. `NORMS` maps a name to a constructor
`(use_running_average, dtype, name) -> layer`. 'batchnorm' keeps its running
statistics in the standard 'batch_stats' collection with momentum 0.9 and
epsilon 1e-5, i.e. exactly PyTorch's BatchNorm2d (whose momentum 0.1 weighs
the *new* batch: running = 0.9 running + 0.1 batch); it is
`advjax.models.batchnorm.BatchNorm`, flax BatchNorm's variables and
arithmetic with statistics and a backward pass that run multi-threaded on
XLA:CPU. 'groupnorm' (Wu & He,
2018) uses 32 groups, or the largest divisor of the channel count below 32
for narrow layers. 'none' is the identity. 'aux_batchnorm:<set>' is the
auxiliary BatchNorm of AdvProp (Xie thesis, ch. 7, sec. 7.4.2) and of the
mixture-BN study (ch. 6, sec. 6.4.2): the same BatchNorm, but with
parameters `scale_<set>`, `bias_<set>` and statistics in the collection
'batch_stats_<set>', so that `create_model(name, norm='aux_batchnorm:adv')`
builds the adversarial twin of a model whose every other weight has the same
path and is therefore shared. `advjax.models.aux_bn` builds on this: it
selects a set, initialises any number of sets and exports the plain model.

Parameterised names. Both registries accept arguments after a colon, so a
config string can carry them: 'elu:0.5', 'celu:1.5', 'parametric_softplus:10',
'smooth_relu:400' (initial alpha), 'relu_softplus_grad:10', 'batchnorm:0.99'
(momentum), 'aux_batchnorm:adv,0.99'. The smooth activations are those of
smooth adversarial training (ch. 5): parametric softplus (eq. 5.2), SmoothReLU
with a learnable alpha (eq. 5.4), ELU and CELU (eqs. 5.6-5.8), plus the
diagnostic 'relu_softplus_grad', ReLU forward with parametric softplus'
derivative backward (sec. 5.3, table 5.1).

BatchNorm caveat: whenever a model runs with batch statistics
(`use_batch_stats=True`, the default when `train=True`) it also updates the
running averages, so `model.apply` must be called with
`mutable=['batch_stats']`, even when `train=False`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.errors import ConfigError, unknown_name
from advjax.models import batchnorm, convolution, pooling

Array = jax.Array
Activation = Callable[[Array], Array]
ActivationFactory = Callable[[], Activation]
NormFactory = Callable[..., Callable[[Array], Array]]

# PyTorch's BatchNorm defaults (momentum 0.1 on the new batch, eps 1e-5), so
# weights and statistics move between the two frameworks unchanged.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
GROUPNORM_MAX_GROUPS = 32

# He et al. (2015) initialisation as in torchvision's ResNets: ReLU networks
# keep the activation variance constant through depth only with gain 2.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """Resolves a compute dtype name ('float32' or 'bfloat16') to a jnp dtype."""
  if name not in DTYPES:
    raise unknown_name("dtype", name, DTYPES)
  return DTYPES[name]


def parse_name(name: str) -> tuple[str, tuple[str, ...]]:
  """Splits a registry name with arguments, 'base:arg1,arg2', into its parts.

  Configs hold only strings, so a parameterised activation or normalisation
  is written as its registry name, a colon and comma-separated arguments:
  'elu:0.5', 'parametric_softplus:10', 'batchnorm:0.99', 'aux_batchnorm:adv'.

  Args:
    name: 'base' or 'base:args'.

  Returns:
    (base, args), args a tuple of strings (empty without a colon).
  """
  base, _, rest = name.partition(":")
  return base, tuple(a.strip() for a in rest.split(",")) if rest else ()


def _build(kind: str, registry: dict, spec: str, **kwargs):
  """Calls the factory of `spec` with its parsed arguments; ConfigError if either is bad."""
  base, args = parse_name(spec)
  if base not in registry:
    raise unknown_name(kind, spec, registry)
  try:
    return registry[base](*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{kind} {spec!r}: bad arguments {args} ({e})") from None


def normalize_input(x: Array, mean, std, dtype) -> Array:
  """Maps pixel-space images to the network's input space.

  Normalising inside the model keeps attacks and epsilons in pixel space
  ([0, 1]), where projections and clipping are simple.

  Args:
    x: [batch, height, width, channels] in [0, 1].
    mean: per-channel means, a tuple of length channels (or 1, broadcast).
    std: per-channel standard deviations, same length as `mean`.
    dtype: compute dtype of the result.

  Returns:
    [batch, height, width, channels] array `(x - mean) / std` in `dtype`.
  """
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x - mean) / std).astype(dtype)


# ----------------------------------------------------------------- activations

ACTIVATIONS: dict[str, ActivationFactory] = {}


def register_activation(name: str, factory: ActivationFactory) -> None:
  """Adds an activation to the registry.

  Args:
    name: the registry name used in configs.
    factory: zero-argument callable returning the activation for one use
      site: a function `[...] -> [...]`, or a new `nn.Module` instance when
      the activation has parameters (it must then be called inside a compact
      method, which is where models call `get_activation`).
  """
  ACTIVATIONS[name] = factory


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
  return _build("activation", ACTIVATIONS, name)


def check_activation(name: str) -> None:
  """Raises ConfigError unless `name` (with its arguments) builds an activation."""
  get_activation(name)


# -------------------------------------------------------------- normalisations


def groupnorm_groups(channels: int, max_groups: int = GROUPNORM_MAX_GROUPS) -> int:
  """Largest number of groups <= max_groups that divides `channels`."""
  return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class GroupNorm(nn.Module):
  """Group normalisation with the group count derived from the input width.

  Channels are split into `groupnorm_groups(C)` groups; each example's group
  is normalised by its own mean and variance (computed in float32), then a
  per-channel affine map is applied. Independent of the batch, so it needs no
  running statistics and behaves identically in training and evaluation.

  Attributes:
    epsilon: added to the variance.
    zero_init: initialise the scale to 0 instead of 1.
    dtype: compute dtype of the output.
  """

  epsilon: float = 1e-5
  zero_init: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [batch, ..., channels] -> same shape, in `dtype`."""
    channels = x.shape[-1]
    groups = groupnorm_groups(channels)
    scale = self.param("scale", _scale_init(self.zero_init), (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    xf = x.astype(jnp.float32)
    grouped = xf.reshape(*x.shape[:-1], groups, channels // groups)
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=axes, keepdims=True)
    var = grouped.var(axis=axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (normed * scale + bias).astype(self.dtype)


def _momentum(momentum: str) -> float:
  m = float(momentum)
  if not 0.0 <= m < 1.0:
    raise ValueError("momentum must be in [0, 1)")
  return m


def _scale_init(zero_init: bool):
  return nn.initializers.zeros if zero_init else nn.initializers.ones


def _batchnorm(momentum: str = str(BN_MOMENTUM), *, use_running_average: bool, dtype,
               name: str | None, zero_init: bool = False):
  return batchnorm.BatchNorm(use_running_average=use_running_average, momentum=_momentum(momentum),
                             epsilon=BN_EPSILON, zero_init=zero_init, dtype=dtype, name=name)


def _groupnorm(*, use_running_average: bool, dtype, name: str | None, zero_init: bool = False):
  del use_running_average  # Per-example statistics: nothing to switch.
  return GroupNorm(zero_init=zero_init, dtype=dtype, name=name)


# Auxiliary batch norms (AdvProp, Xie thesis ch. 7, sec. 7.4.2; MBN, ch. 6, sec. 6.4.2).
# Set `s` keeps its affine parameters next to the main ones, as params
# `scale_<s>` and `bias_<s>`, and its running statistics in a collection of its
# own, `AUX_COLLECTION_PREFIX + s`.
AUX_COLLECTION_PREFIX = "batch_stats_"
MAIN_BN_SET = "main"


def aux_collection(bn_set: str) -> str:
  """The variable collection holding the running statistics of auxiliary set `bn_set`."""
  return AUX_COLLECTION_PREFIX + bn_set


def _aux_batchnorm(bn_set: str, momentum: str = str(BN_MOMENTUM), *, use_running_average: bool,
                   dtype, name: str | None, zero_init: bool = False):
  if not bn_set.isidentifier() or bn_set == MAIN_BN_SET:
    raise ValueError(f"auxiliary set name {bn_set!r} must be an identifier other than {MAIN_BN_SET!r}")
  return batchnorm.BatchNorm(use_running_average=use_running_average, momentum=_momentum(momentum),
                             epsilon=BN_EPSILON, zero_init=zero_init, dtype=dtype, name=name,
                             scale_name=f"scale_{bn_set}", bias_name=f"bias_{bn_set}",
                             collection=aux_collection(bn_set))


def _identity(*, use_running_average: bool, dtype, name: str | None, zero_init: bool = False):
  del use_running_average, dtype, name, zero_init
  return lambda x: x


NORMS: dict[str, NormFactory] = {}


def register_norm(name: str, factory: NormFactory) -> None:
  """Adds a normalisation to the registry.

  Args:
    name: the registry name used in configs.
    factory: called as `factory(*args, use_running_average=..., dtype=...,
      name=..., zero_init=...)` inside a compact method (args parsed from the
      name after a colon); returns a layer `[..., C] -> [..., C]`.
  """
  NORMS[name] = factory


register_norm("batchnorm", _batchnorm)
register_norm("groupnorm", _groupnorm)
register_norm("none", _identity)
register_norm("aux_batchnorm", _aux_batchnorm)


def make_norm(kind: str, *, use_running_average: bool, dtype=jnp.float32,
              name: str | None = None, zero_init: bool = False) -> Callable[[Array], Array]:
  """Builds the normalisation layer `kind` for one use site.

  Args:
    kind: a key of `NORMS` ('batchnorm', 'groupnorm', 'none',
      'aux_batchnorm'), optionally with arguments after a colon:
      'batchnorm:<momentum>', 'aux_batchnorm:<set>[,<momentum>]'.
    use_running_average: BatchNorm normalises with its running statistics if
      True, with the current batch's statistics (and updates the running
      ones) if False. Ignored by batch-independent normalisations.
    dtype: compute dtype; parameters and statistics stay float32.
    name: submodule name; models use PyTorch-like names so that
      `advjax.bridge` can map weights mechanically.
    zero_init: start the affine scale at 0, so that a residual branch ending
      in this layer starts as the zero function (feature-denoising blocks).

  Returns:
    A layer `x: [batch, height, width, channels] -> same shape`.

  Raises:
    ConfigError: if `kind` is not registered.
  """
  return _build("normalisation", NORMS, kind, use_running_average=use_running_average, dtype=dtype,
                name=name, zero_init=zero_init)


def check_norm(kind: str) -> None:
  """Raises ConfigError unless `kind` (with its arguments) builds a normalisation."""
  make_norm(kind, use_running_average=True)


# ----------------------------------------------------------------------- convs


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
         use_bias: bool = False, dtype=jnp.float32, kernel_init=conv_kernel_init,
         name: str | None = None) -> nn.Module:
  """A square convolution padded like PyTorch's `Conv2d(padding=dilation * (kernel // 2))`.

  Explicit symmetric padding rather than 'SAME': for a stride-2 layer on an
  even input, 'SAME' pads (0, 1) where PyTorch pads (1, 1), which shifts the
  sampling grid and would break weight transfer with `advjax.bridge`.

  The layer is `advjax.models.convolution.Conv`: nn.Conv's parameters, initial
  values and forward pass, with an input gradient that XLA:CPU runs at full
  speed inside the compiled loops of the attacks (see that module).

  Args:
    features: output channels.
    kernel: kernel height and width (odd).
    stride: spatial stride.
    dilation: kernel dilation (atrous convolution).
    groups: feature groups (the input channels for a depthwise convolution).
    use_bias: whether to add a bias (redundant before a BatchNorm).
    dtype: compute dtype; the kernel is stored in float32.
    kernel_init: kernel initialiser (He's fan-out normal by default).
    name: submodule name.

  Returns:
    A module mapping [batch, H, W, C] to [batch, ceil(H/stride),
    ceil(W/stride), features].
  """
  pad = dilation * (kernel // 2)
  return convolution.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=(dilation, dilation),
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      name=name,
  )


def max_pool(x: Array, window: int, stride: int, padding: Any = "VALID") -> Array:
  """Max pooling whose gradient goes to each window's first maximum, fast on CPU (`pooling.max_pool`).

  Equal, values and gradients, to `flax.linen.max_pool(x, (window, window),
  (stride, stride), padding)`.
  """
  return pooling.max_pool(x, (window, window), (stride, stride), padding)


def dense(features: int, *, dtype=jnp.float32, name: str | None = None) -> nn.Dense:
  """A fully connected layer with float32 parameters."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def resolve_batch_stats(train: bool, use_batch_stats: bool | None) -> bool:
  """`use_batch_stats=None` means "follow `train`"."""
  return train if use_batch_stats is None else use_batch_stats
