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
the *new* batch: running = 0.9 running + 0.1 batch). 'groupnorm' (Wu & He,
2018) uses 32 groups, or the largest divisor of the channel count below 32
for narrow layers. 'none' is the identity. A variant with auxiliary batch
statistics for adversarial examples (AdvProp, Xie et al. 2020) is meant to be
added as one more entry here: a layer that keeps its affine parameters and
statistics in collections of its own (e.g. 'batch_stats_adv'), so that
`create_model(name, norm=<that entry>)` builds the adversarial twin of a model
whose convolution weights have the same paths and are therefore shared.

BatchNorm caveat: whenever a model runs with batch statistics
(`use_batch_stats=True`, the default when `train=True`) it also updates the
running averages, so `model.apply` must be called with
`mutable=['batch_stats']`, even when `train=False`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.errors import unknown_name

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
register_activation("elu", _stateless(nn.elu))
register_activation("tanh", _stateless(jnp.tanh))


def get_activation(name: str) -> Activation:
  """Builds the activation `name` for one use site.

  Args:
    name: a key of `ACTIVATIONS`.

  Returns:
    An elementwise callable `x -> act(x)` preserving shape and dtype.

  Raises:
    ConfigError: if `name` is not registered.
  """
  if name not in ACTIVATIONS:
    raise unknown_name("activation", name, ACTIVATIONS)
  return ACTIVATIONS[name]()


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
    dtype: compute dtype of the output.
  """

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [batch, ..., channels] -> same shape, in `dtype`."""
    channels = x.shape[-1]
    groups = groupnorm_groups(channels)
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    xf = x.astype(jnp.float32)
    grouped = xf.reshape(*x.shape[:-1], groups, channels // groups)
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=axes, keepdims=True)
    var = grouped.var(axis=axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (normed * scale + bias).astype(self.dtype)


def _batchnorm(*, use_running_average: bool, dtype, name: str | None):
  return nn.BatchNorm(
      use_running_average=use_running_average,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def _groupnorm(*, use_running_average: bool, dtype, name: str | None):
  del use_running_average  # Per-example statistics: nothing to switch.
  return GroupNorm(dtype=dtype, name=name)


def _identity(*, use_running_average: bool, dtype, name: str | None):
  del use_running_average, dtype, name
  return lambda x: x


NORMS: dict[str, NormFactory] = {}


def register_norm(name: str, factory: NormFactory) -> None:
  """Adds a normalisation to the registry.

  Args:
    name: the registry name used in configs.
    factory: called as `factory(use_running_average=..., dtype=..., name=...)`
      inside a compact method; returns a layer `[..., C] -> [..., C]`.
  """
  NORMS[name] = factory


register_norm("batchnorm", _batchnorm)
register_norm("groupnorm", _groupnorm)
register_norm("none", _identity)


def make_norm(kind: str, *, use_running_average: bool, dtype=jnp.float32,
              name: str | None = None) -> Callable[[Array], Array]:
  """Builds the normalisation layer `kind` for one use site.

  Args:
    kind: a key of `NORMS` ('batchnorm', 'groupnorm', 'none').
    use_running_average: BatchNorm normalises with its running statistics if
      True, with the current batch's statistics (and updates the running
      ones) if False. Ignored by batch-independent normalisations.
    dtype: compute dtype; parameters and statistics stay float32.
    name: submodule name; models use PyTorch-like names so that
      `advjax.bridge` can map weights mechanically.

  Returns:
    A layer `x: [batch, height, width, channels] -> same shape`.

  Raises:
    ConfigError: if `kind` is not registered.
  """
  if kind not in NORMS:
    raise unknown_name("normalisation", kind, NORMS)
  return NORMS[kind](use_running_average=use_running_average, dtype=dtype, name=name)


# ----------------------------------------------------------------------- convs


def conv(features: int, kernel: int, *, stride: int = 1, use_bias: bool = False,
         dtype=jnp.float32, name: str | None = None) -> nn.Conv:
  """A square convolution padded like PyTorch's `Conv2d(padding=kernel // 2)`.

  Explicit symmetric padding rather than 'SAME': for a stride-2 layer on an
  even input, 'SAME' pads (0, 1) where PyTorch pads (1, 1), which shifts the
  sampling grid and would break weight transfer with `advjax.bridge`.

  Args:
    features: output channels.
    kernel: kernel height and width (odd).
    stride: spatial stride.
    use_bias: whether to add a bias (redundant before a BatchNorm).
    dtype: compute dtype; the kernel is stored in float32.
    name: submodule name.

  Returns:
    An `nn.Conv` mapping [batch, H, W, C] to [batch, ceil(H/stride),
    ceil(W/stride), features].
  """
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=conv_kernel_init,
      name=name,
  )


def dense(features: int, *, dtype=jnp.float32, name: str | None = None) -> nn.Dense:
  """A fully connected layer with float32 parameters."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def resolve_batch_stats(train: bool, use_batch_stats: bool | None) -> bool:
  """`use_batch_stats=None` means "follow `train`"."""
  return train if use_batch_stats is None else use_batch_stats
