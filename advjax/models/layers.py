"""The layers every model builds from: convolution, dense, max pool, input normalisation, dtypes.

Model files build their layers here rather than from `flax.linen` directly,
so that one place decides how a layer runs. A convolution is `nn.Conv` and a
max pool `nn.max_pool`, except on the CPU backend, where they are the tuned
equivalents of `advjax.cpu` (the same parameters, values and gradients, run
faster by XLA:CPU; `ADVJAX_CPU_TUNING=off` switches them off). Activations
and normalisations are chosen by name (`advjax.models.activations`,
`advjax.models.norms`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.cpu import convolution, pooling, tuning
from advjax.errors import unknown_name

Array = jax.Array

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


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
         use_bias: bool = False, dtype=jnp.float32, kernel_init=conv_kernel_init,
         name: str | None = None) -> nn.Module:
  """A square convolution padded like PyTorch's `Conv2d(padding=dilation * (kernel // 2))`.

  Explicit symmetric padding rather than 'SAME': for a stride-2 layer on an
  even input, 'SAME' pads (0, 1) where PyTorch pads (1, 1), which shifts the
  sampling grid and would break weight transfer with `advjax.bridge`.

  The layer is `nn.Conv`, or on the CPU backend `advjax.cpu.convolution.Conv`:
  nn.Conv's parameters, initial values and forward pass, with an input
  gradient that XLA:CPU runs at full speed inside the compiled loops of the
  attacks (see that module).

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
  layer = convolution.Conv if tuning.layers_tuned() else nn.Conv
  return layer(
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
  """`flax.linen.max_pool(x, (window, window), (stride, stride), padding)`.

  On the CPU backend `advjax.cpu.pooling.max_pool`: equal values and
  gradients (each window's to its first maximum), a faster backward pass.
  """
  pool = pooling.max_pool if tuning.layers_tuned() else nn.max_pool
  return pool(x, (window, window), (stride, stride), padding)


def dense(features: int, *, dtype=jnp.float32, name: str | None = None) -> nn.Dense:
  """A fully connected layer with float32 parameters."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def resolve_batch_stats(train: bool, use_batch_stats: bool | None) -> bool:
  """`use_batch_stats=None` means "follow `train`"."""
  return train if use_batch_stats is None else use_batch_stats
