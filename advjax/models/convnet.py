"""The small VGG-style convnet of the universality paper (appendix I).

Architecture, in the paper's notation:

    C32-C32-MP-D0.2-C64-C64-MP-D0.2-C128-C128-MP-D0.2-L512-D0.5-L(classes)

C = 3x3 convolution (stride 1, padding 1) followed by normalisation and the
activation; MP = 2x2 max pool, stride 2 (floor, so 28 -> 14 -> 7 -> 3 on MNIST
and 32 -> 16 -> 8 -> 4 on CIFAR); D = dropout; L512 = dense layer with the
activation. The convolutions keep their bias, as in the original (Keras)
model, so the network is still well defined with `norm='none'`.

Submodule names (conv1..conv6, bn1..bn6, fc1, and the classifier head's
fc2) follow `benchmarks/torch_models.ConvNet`, which `advjax.bridge` relies on.

Dense prediction ('convnet_dense'): the same layers and variable names, but
each stage is read before its max pool (at 1/1, 1/2 and 1/4 of the input) and
without dropout after the pools, so an FCN-8s head on it has a skip at the
input resolution. Its variables are the convnet's minus fc1, so a classifier
convnet's checkpoint initialises it (`model.backbone_checkpoint`), which is
how the digit canvases get their robust-backbone segmentation model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from advjax.errors import ConfigError
from advjax.models import activations, layers, norms
from advjax.models.network import Backbone, Features


class ConvNet(Backbone):
  """Three conv-conv-pool stages; the pooled vector is the 512-wide hidden layer.

  Stage s ends after its max pool and dropout ('stage1'..'stage3', the
  insertion positions); with `stage_taps='unpooled'` the stage ends, and an
  inserted block sits, before the max pool. The pooled vector is the flattened last stage through
  fc1, the activation and dropout, which the classifier head (`fc2`) reads.

  Attributes:
    widths: filters of the six convolutions.
    hidden: width of the hidden dense layer.
    conv_dropout: dropout rate after each pooling.
    head_dropout: dropout rate after the hidden dense layer.
    stage_taps: 'pooled' (the stage outputs are the pooled maps) or
      'unpooled' (the maps before each pool, at 1/1, 1/2, 1/4 resolution).
    (activation, norm, dtype, insert_block, insert_after: see `Backbone`.)
  """

  widths: Sequence[int] = (32, 32, 64, 64, 128, 128)
  hidden: int = 512
  conv_dropout: float = 0.2
  head_dropout: float = 0.5
  stage_taps: str = "pooled"

  def positions(self) -> dict[str, tuple[str, ...]]:
    return {"stage": tuple(f"stage{s + 1}" for s in range(len(self.widths) // 2)), "block": ()}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool, pool: bool = True) -> Features:
    """x: [batch, height, width, channels] normalised -> Features (pooled [batch, hidden])."""
    if self.stage_taps not in ("pooled", "unpooled"):
      raise ConfigError(f"convnet: stage_taps must be 'pooled' or 'unpooled', not {self.stage_taps!r}")
    unpooled = self.stage_taps == "unpooled"
    dtype = self.compute_dtype
    stages = []
    for i, width in enumerate(self.widths):
      x = layers.conv(width, 3, use_bias=True, dtype=dtype, name=f"conv{i + 1}")(x)
      x = norms.make_norm(self.norm, use_running_average=not use_batch_stats,
                           dtype=dtype, name=f"bn{i + 1}")(x)
      x = activations.get_activation(self.activation)(x)
      if i % 2 == 1:
        position = f"stage{len(stages) + 1}"
        if unpooled:
          x = self.insert(position, x, use_batch_stats)
          stages.append(x)
        x = layers.max_pool(x, 2, 2)
        x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
        if not unpooled:
          x = self.insert(position, x, use_batch_stats)
          stages.append(x)
    if not pool:
      return Features(tuple(stages), None)
    # Flattened in NHWC order; the bridge permutes PyTorch's NCHW order to this.
    h = x.reshape(x.shape[0], -1)
    h = layers.dense(self.hidden, dtype=dtype, name="fc1")(h)
    h = activations.get_activation(self.activation)(h)
    h = nn.Dropout(self.head_dropout, deterministic=not train)(h)
    return Features(tuple(stages), h)


ConvNetTiny = functools.partial(ConvNet, widths=(8, 8, 16, 16, 16, 16), hidden=32)
ConvNetDense = functools.partial(ConvNet, stage_taps="unpooled", conv_dropout=0.0)
ConvNetDenseTiny = functools.partial(ConvNetTiny, stage_taps="unpooled", conv_dropout=0.0)
