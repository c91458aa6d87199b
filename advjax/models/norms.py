"""Normalisations by name: the registry `NORMS`, BatchNorm, GroupNorm and the auxiliary BN sets.

Models never name a concrete normalisation layer. They hold its *name*
(`norm='groupnorm'`) and build it where it is used:

    x = norms.make_norm(self.norm, use_running_average=not use_batch_stats,
                        dtype=dtype, name="bn1")(x)

`NORMS` maps a name to a constructor `(use_running_average, dtype, name,
zero_init) -> layer`:

  batchnorm[:momentum]   `BatchNorm` below, running statistics in the
                         'batch_stats' collection with momentum 0.9 and
                         epsilon 1e-5: exactly PyTorch's BatchNorm2d (whose
                         momentum 0.1 weighs the *new* batch: running =
                         0.9 running + 0.1 batch), with flax nn.BatchNorm's
                         variable names
  groupnorm              Wu & He (2018): 32 groups, or the largest divisor of
                         the channel count below 32 for narrow layers
  none                   the identity
  aux_batchnorm:<set>[,momentum]
                         the auxiliary BatchNorm of AdvProp (Xie thesis ch. 7,
                         sec. 7.4.2) and of the mixture-BN study (ch. 6, sec.
                         6.4.2): the same BatchNorm, with parameters
                         `scale_<set>`, `bias_<set>` and statistics in the
                         collection 'batch_stats_<set>', so that a model built
                         with it is the adversarial twin of the 'batchnorm'
                         model whose every other weight has the same path and
                         is therefore shared (`advjax.models.aux_bn` selects,
                         initialises and exports the sets)

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
from jax import lax

from advjax.cpu import batchnorm as cpu_batchnorm
from advjax.cpu import tuning
from advjax.registry import Registry

Array = jax.Array
NormFactory = Callable[..., Callable[[Array], Array]]

# PyTorch's BatchNorm defaults (momentum 0.1 on the new batch, eps 1e-5), so
# weights and statistics move between the two frameworks unchanged.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
GROUPNORM_MAX_GROUPS = 32


def normalize_with_batch_statistics(x2: Array, scale: Array, bias: Array, epsilon: float
                                    ) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm of float32 [N, C] rows, flax nn.BatchNorm's arithmetic.

  Args:
    x2: [N, C] float32 activations, one row per position.
    scale, bias: [C] float32 affine parameters.
    epsilon: added to the variance.

  Returns:
    (y [N, C], mean [C], biased var [C]).
  """
  mean = jnp.mean(x2, axis=0)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x2), axis=0) - jnp.square(mean))
  return (x2 - mean) * (lax.rsqrt(var + epsilon) * scale) + bias, mean, var


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last, with nameable parameters and statistics collection.

  On the CPU backend the training-mode normalisation is
  `advjax.cpu.batchnorm`'s (the same values, a backward pass fast on
  XLA:CPU); elsewhere, or with `ADVJAX_CPU_TUNING=off`, it is
  `normalize_with_batch_statistics` above, differentiated by JAX.

  Attributes:
    use_running_average: normalise with the running statistics instead of
      the batch's (and leave them unchanged).
    momentum: running = momentum * running + (1 - momentum) * batch.
    epsilon: added to the variance.
    zero_init: initialise the scale to 0 instead of 1.
    dtype: compute dtype of the output (statistics are float32).
    scale_name, bias_name: names of the affine parameters.
    collection: the variable collection of the running `mean` and `var`.
  """

  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  zero_init: bool = False
  dtype: Any = jnp.float32
  scale_name: str = "scale"
  bias_name: str = "bias"
  collection: str = "batch_stats"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [batch, ..., channels] -> same shape, in `dtype`."""
    features = (x.shape[-1],)
    ra_mean = self.variable(self.collection, "mean", lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable(self.collection, "var", lambda: jnp.ones(features, jnp.float32))
    scale = self.param(self.scale_name, _scale_init(self.zero_init), features, jnp.float32)
    bias = self.param(self.bias_name, nn.initializers.zeros, features, jnp.float32)
    if self.use_running_average:
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return jnp.asarray(y, self.dtype)
    x2 = x.reshape(-1, features[0]).astype(jnp.float32)
    normalize = (cpu_batchnorm.normalize_with_batch_statistics if tuning.layers_tuned()
                 else normalize_with_batch_statistics)
    y2, mean, var = normalize(x2, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * lax.stop_gradient(mean)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * lax.stop_gradient(var)
    return y2.reshape(x.shape).astype(self.dtype)


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
  return BatchNorm(use_running_average=use_running_average, momentum=_momentum(momentum),
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
  return BatchNorm(use_running_average=use_running_average, momentum=_momentum(momentum),
                   epsilon=BN_EPSILON, zero_init=zero_init, dtype=dtype, name=name,
                   scale_name=f"scale_{bn_set}", bias_name=f"bias_{bn_set}",
                   collection=aux_collection(bn_set))


def _identity(*, use_running_average: bool, dtype, name: str | None, zero_init: bool = False):
  del use_running_average, dtype, name, zero_init
  return lambda x: x


NORMS = Registry("normalisation")


def register_norm(name: str, factory: NormFactory) -> None:
  """Adds a normalisation to the registry.

  Args:
    name: the registry name used in configs.
    factory: called as `factory(*args, use_running_average=..., dtype=...,
      name=..., zero_init=...)` inside a compact method (args parsed from the
      name after a colon); returns a layer `[..., C] -> [..., C]`.
  """
  NORMS.register(name, factory)


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
  return NORMS.build(kind, use_running_average=use_running_average, dtype=dtype, name=name,
                     zero_init=zero_init)


def check_norm(kind: str) -> None:
  """Raises ConfigError unless `kind` (with its arguments) builds a normalisation."""
  make_norm(kind, use_running_average=True)
