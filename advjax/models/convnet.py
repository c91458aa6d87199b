"""The small VGG-style convnet of the universality paper (appendix I).

Architecture, in the paper's notation:

    C32-C32-MP-D0.2-C64-C64-MP-D0.2-C128-C128-MP-D0.2-L512-D0.5-L(classes)

C = 3x3 convolution (stride 1, padding 1) followed by normalisation and the
activation; MP = 2x2 max pool, stride 2 (floor, so 28 -> 14 -> 7 -> 3 on MNIST
and 32 -> 16 -> 8 -> 4 on CIFAR); D = dropout; L512 = dense layer with the
activation. The convolutions keep their bias, as in the original (Keras)
model, so the network is still well defined with `norm='none'`.

Submodule names (conv1..conv6, bn1..bn6, fc1, fc2) follow
`benchmarks/torch_models.ConvNet`, which `advjax.bridge` relies on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import layers


class ConvNet(nn.Module):
  """Three conv-conv-pool stages and a two-layer classifier head.

  Attributes:
    num_classes: number of logits.
    widths: filters of the six convolutions.
    hidden: width of the hidden dense layer.
    conv_dropout: dropout rate after each pooling.
    head_dropout: dropout rate after the hidden dense layer.
    activation: `layers.ACTIVATIONS` name.
    norm: `layers.NORMS` name.
    mean, std: per-channel input normalisation (pixel space -> network input).
    dtype: compute dtype name, 'float32' or 'bfloat16'.
  """

  num_classes: int
  widths: Sequence[int] = (32, 32, 64, 64, 128, 128)
  hidden: int = 512
  conv_dropout: float = 0.2
  head_dropout: float = 0.5
  activation: str = "relu"
  norm: str = "batchnorm"
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.5,)
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               use_batch_stats: bool | None = None) -> jax.Array:
    """Computes logits.

    Args:
      x: [batch, height, width, channels] images in [0, 1].
      train: enables dropout (needs the 'dropout' rng) and, by default, batch
        statistics.
      use_batch_stats: whether BatchNorm uses batch statistics; None = train.

    Returns:
      [batch, num_classes] float32 logits.
    """
    dtype = layers.compute_dtype(self.dtype)
    use_batch_stats = layers.resolve_batch_stats(train, use_batch_stats)
    x = layers.normalize_input(x, self.mean, self.std, dtype)
    for i, width in enumerate(self.widths):
      x = layers.conv(width, 3, use_bias=True, dtype=dtype, name=f"conv{i + 1}")(x)
      x = layers.make_norm(self.norm, use_running_average=not use_batch_stats,
                           dtype=dtype, name=f"bn{i + 1}")(x)
      x = layers.get_activation(self.activation)(x)
      if i % 2 == 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
    # Flattened in NHWC order; the bridge permutes PyTorch's NCHW order to this.
    x = x.reshape(x.shape[0], -1)
    x = layers.dense(self.hidden, dtype=dtype, name="fc1")(x)
    x = layers.get_activation(self.activation)(x)
    x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
    x = layers.dense(self.num_classes, dtype=dtype, name="fc2")(x)
    return x.astype(jnp.float32)


ConvNetTiny = functools.partial(ConvNet, widths=(8, 8, 16, 16, 16, 16), hidden=32)
