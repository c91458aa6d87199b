"""Pre-activation residual networks (He et al., 2016, "Identity Mappings in
Deep Residual Networks"), also the base of the wide ResNets.

Moving normalisation and activation in front of each convolution makes the
skip path a pure identity from input to output:

    x_{l+1} = x_l + F(x_l),   F(x) = conv2(act(norm2(conv1(act(norm1(x)))))).

When a block changes width or resolution, the shortcut is a 1x1 strided
convolution applied to the *pre-activated* input act(norm1(x)), so the first
normalisation is shared by both paths. Because nothing follows the final
addition, the network ends with norm + act before global average pooling.

`preact_resnet18` is the CIFAR variant popular in adversarial training (Rice
et al., 2020): a 3x3 stem without normalisation or max pool, four stages of
two blocks with 64-128-256-512 channels, strides 1-2-2-2. The wide ResNets in
`wide_resnet.py` are the same network with three wider stages and optional
dropout between the two convolutions of each block.

Submodule names: conv1 (stem), layer{s}_{b}/{bn1, conv1, bn2, conv2,
shortcut}, bn (final), and the classifier head's fc. `advjax.bridge` maps them to the reference PyTorch
modules in `benchmarks/torch_models.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import activations, layers, norms
from advjax.models.network import Backbone, Features


class PreActBlock(nn.Module):
  """Pre-activation basic block: norm-act-conv3x3, norm-act-(dropout)-conv3x3.

  Attributes:
    features: output channels.
    stride: stride of the first convolution (and of the projection).
    activation: `activations.ACTIVATIONS` name.
    norm: `norms.NORMS` name.
    dtype: jnp compute dtype.
    dropout: dropout rate between the two convolutions (wide ResNets).
  """

  features: int
  stride: int
  activation: str
  norm: str
  dtype: Any
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool) -> jax.Array:
    """x: [batch, H, W, C] -> [batch, H / stride, W / stride, features]."""
    norm = functools.partial(norms.make_norm, self.norm,
                             use_running_average=not use_batch_stats, dtype=self.dtype)
    out = activations.get_activation(self.activation)(norm(name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, stride=self.stride, dtype=self.dtype,
                             name="shortcut")(out)
    else:
      shortcut = x
    y = layers.conv(self.features, 3, stride=self.stride, dtype=self.dtype, name="conv1")(out)
    y = activations.get_activation(self.activation)(norm(name="bn2")(y))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    return y + shortcut


class PreActResNet(Backbone):
  """Pre-activation ResNet with a CIFAR stem.

  Stage s ('stage1', ...) ends after its last block; every block
  ('layer{s}_{b}') is an insertion position too. The pooled vector is the
  global average of the last stage after the final norm and activation.

  Attributes:
    stage_sizes: blocks per stage; stage s > 0 starts with stride 2.
    widths: per-stage output channels.
    stem_width: channels of the stem convolution; None = widths[0].
    dropout: dropout rate inside each block (0 disables it).
    (activation, norm, dtype, insert_block, insert_after: see `Backbone`.)
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int | None = None
  dropout: float = 0.0

  def positions(self) -> dict[str, tuple[str, ...]]:
    return {"stage": tuple(f"stage{s + 1}" for s in range(len(self.stage_sizes))),
            "block": tuple(f"layer{s + 1}_{b}" for s, n in enumerate(self.stage_sizes) for b in range(n))}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool, pool: bool = True) -> Features:
    """x: [batch, height, width, channels] normalised -> Features (pooled [batch, channels])."""
    dtype = self.compute_dtype
    stem_width = self.widths[0] if self.stem_width is None else self.stem_width
    x = layers.conv(stem_width, 3, dtype=dtype, name="conv1")(x)
    stages = []
    for s, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(num_blocks):
        x = PreActBlock(
            features=width,
            stride=2 if s > 0 and b == 0 else 1,
            activation=self.activation,
            norm=self.norm,
            dtype=dtype,
            dropout=self.dropout,
            name=f"layer{s + 1}_{b}",
        )(x, train, use_batch_stats)
        x = self.insert(f"layer{s + 1}_{b}", x, use_batch_stats, placement="block")
      x = self.insert(f"stage{s + 1}", x, use_batch_stats)
      stages.append(x)
    if not pool:
      return Features(tuple(stages), None)
    x = norms.make_norm(self.norm, use_running_average=not use_batch_stats,
                         dtype=dtype, name="bn")(x)
    x = activations.get_activation(self.activation)(x)
    return Features(tuple(stages), jnp.mean(x, axis=(1, 2)))


PreActResNet18 = functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2),
                                   widths=(64, 128, 256, 512))
PreActResNet18Tiny = functools.partial(PreActResNet, stage_sizes=(1, 1, 1, 1),
                                       widths=(8, 16, 32, 64))
