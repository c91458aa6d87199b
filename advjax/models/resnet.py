"""Post-activation residual networks (He et al., 2016, "Deep Residual Learning").

A residual block computes y = act(F(x) + S(x)), where F is a small stack of
conv-norm-act layers and S is the identity, or a projection (1x1 convolution
with stride + normalisation) when F changes the width or resolution ("option
B" of the paper). Two block types and two stems cover the models used here:

* CIFAR ResNet-20 (`resnet20`): a 3x3 stem, three stages of three basic blocks
  (two 3x3 convs each), stride 2 at the start of stages 2 and 3, global
  average pooling and a dense layer: 6n+2 = 20 layers for n = 3. The
  shared-adversarial-training paper widens the classic 16-32-64 feature maps
  to 64-128-256 (4.33M parameters at 10 classes).
* ImageNet ResNet-50/101/152 (`resnet50`, ...), torchvision layout: a 7x7
  stride-2 stem, 3x3 stride-2 max pool, bottleneck blocks (1x1 reduce, 3x3,
  1x1 expand by 4) with the stride on the 3x3 conv ("ResNet v1.5"), stages of
  [3, 4, 6, 3], [3, 4, 23, 3] and [3, 8, 36, 3] blocks. `wide_resnet50_2`
  doubles the inner width of every bottleneck (Zagoruyko & Komodakis, 2016).
* Dilated ImageNet ResNets (`resnet50_dilated`, `resnet101_dilated`), the
  backbones of torchvision's FCN-ResNet (`replace_stride_with_dilation=[False,
  True, True]`, the "atrous" trick of Chen et al., 2017, DeepLab): the last
  `dilate_last` stages drop their stride and dilate their 3x3 convolutions
  instead. A 3x3 convolution with dilation d reads

      y[i, j] = sum_{a, b in {-1, 0, 1}} w[a, b] x[i + d a, j + d b]

  (padding d keeps the size), so dropping a stride of 2 and doubling the
  dilation of everything after it sees the same image region at twice the
  sampling rate. Following torchvision, the first block of a dilated stage
  keeps the previous stage's dilation and the later blocks use the new one:
  with `dilate_last=2` stage 3 runs at dilations (1, 2, 2, ...) and stage 4 at
  (2, 4, 4), and the output stride is 8 instead of 32. Only the strides and
  dilations change, so the variables have exactly the names and shapes of the
  undilated network: a classification ResNet-50's backbone loads unchanged.

Submodules carry torchvision's names (conv1, bn1, layer{s}_{b}/conv1, ...,
downsample_conv, downsample_bn, and the classifier head's fc), which `advjax.bridge` maps to
torchvision state-dict keys (layer{s}.{b}.conv1, downsample.0, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.errors import ConfigError
from advjax.models import activations, layers, norms
from advjax.models.network import Backbone, Features


class BasicBlock(nn.Module):
  """Two 3x3 convolutions; output width `features`.

  Attributes:
    features: output channels.
    stride: stride of the first convolution (and of the projection).
    activation: `activations.ACTIVATIONS` name.
    norm: `norms.NORMS` name.
    dtype: jnp compute dtype.
  """

  features: int
  stride: int
  activation: str
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
    """x: [batch, H, W, C] -> [batch, H / stride, W / stride, features]."""
    norm = functools.partial(norms.make_norm, self.norm,
                             use_running_average=not use_batch_stats, dtype=self.dtype)
    y = layers.conv(self.features, 3, stride=self.stride, dtype=self.dtype, name="conv1")(x)
    y = norm(name="bn1")(y)
    y = activations.get_activation(self.activation)(y)
    y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = norm(name="bn2")(y)
    shortcut = _shortcut(x, self.features, self.stride, norm, self.dtype)
    return activations.get_activation(self.activation)(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand; output width 4 * features.

  Attributes:
    features: "planes": output channels are 4 * features.
    stride: stride of the 3x3 convolution (and of the projection).
    activation: `activations.ACTIVATIONS` name.
    norm: `norms.NORMS` name.
    dtype: jnp compute dtype.
    width_multiplier: inner (3x3) width is features * width_multiplier.
    dilation: dilation (and padding) of the 3x3 convolution.
    groups: feature groups of the 3x3 convolution (ResNeXt's cardinality).
  """

  features: int
  stride: int
  activation: str
  norm: str
  dtype: Any
  width_multiplier: int = 1
  dilation: int = 1
  groups: int = 1

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
    """x: [batch, H, W, C] -> [batch, H / stride, W / stride, 4 * features]."""
    norm = functools.partial(norms.make_norm, self.norm,
                             use_running_average=not use_batch_stats, dtype=self.dtype)
    width = self.features * self.width_multiplier
    out = self.features * self.expansion
    y = layers.conv(width, 1, dtype=self.dtype, name="conv1")(x)
    y = activations.get_activation(self.activation)(norm(name="bn1")(y))
    y = layers.conv(width, 3, stride=self.stride, dilation=self.dilation, groups=self.groups, dtype=self.dtype,
                    name="conv2")(y)
    y = activations.get_activation(self.activation)(norm(name="bn2")(y))
    y = layers.conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = norm(name="bn3")(y)
    shortcut = _shortcut(x, out, self.stride, norm, self.dtype)
    return activations.get_activation(self.activation)(y + shortcut)


def _is_bottleneck(block_cls) -> bool:
  base = block_cls.func if isinstance(block_cls, functools.partial) else block_cls
  return isinstance(base, type) and issubclass(base, Bottleneck)


def _shortcut(x: jax.Array, features: int, stride: int, norm, dtype) -> jax.Array:
  """Identity if shapes agree, else a 1x1 strided projection + norm."""
  if stride == 1 and x.shape[-1] == features:
    return x
  x = layers.conv(features, 1, stride=stride, dtype=dtype, name="downsample_conv")(x)
  return norm(name="downsample_bn")(x)


class ResNet(Backbone):
  """Post-activation ResNet with a CIFAR or ImageNet stem.

  Stage s ('stage1', ...) ends after its last block; every block
  ('layer{s}_{b}') is an insertion position too. The pooled vector is the
  global average of the last stage. Stages 2, 3, ... halve the resolution,
  except the last `dilate_last`, which dilate instead (see the module
  docstring; bottleneck blocks only, as in torchvision).

  Attributes:
    stage_sizes: blocks per stage.
    widths: per-stage block `features` (planes); the stem has widths[0].
    block_cls: `BasicBlock` or a `Bottleneck` (possibly a partial of it).
    stem: 'cifar' (3x3 conv) or 'imagenet' (7x7/2 conv + 3x3/2 max pool).
    dilate_last: how many of the last stages replace their stride by
      dilation: 0 (none), 2 (torchvision's FCN/DeepLab layout, output stride
      8 with the ImageNet stem), at most len(stage_sizes) - 1.
    (activation, norm, dtype, insert_block, insert_after: see `Backbone`.)
  """

  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (64, 128, 256)
  block_cls: Any = BasicBlock
  stem: str = "cifar"
  dilate_last: int = 0

  def positions(self) -> dict[str, tuple[str, ...]]:
    return {"stage": tuple(f"stage{s + 1}" for s in range(len(self.stage_sizes))),
            "block": tuple(f"layer{s + 1}_{b}" for s, n in enumerate(self.stage_sizes) for b in range(n))}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool, pool: bool = True) -> Features:
    """x: [batch, height, width, channels] normalised -> Features (pooled [batch, channels])."""
    dtype = self.compute_dtype
    num_stages = len(self.stage_sizes)
    if not 0 <= self.dilate_last < num_stages:
      raise ConfigError(f"model dilate_last={self.dilate_last}: must be in [0, {num_stages - 1}]")
    if self.dilate_last and not _is_bottleneck(self.block_cls):
      raise ConfigError("model dilate_last: dilation needs bottleneck blocks (torchvision's rule)")
    kernel = 7 if self.stem == "imagenet" else 3
    stride = 2 if self.stem == "imagenet" else 1
    x = layers.conv(self.widths[0], kernel, stride=stride, dtype=dtype, name="conv1")(x)
    x = norms.make_norm(self.norm, use_running_average=not use_batch_stats,
                         dtype=dtype, name="bn1")(x)
    x = activations.get_activation(self.activation)(x)
    if self.stem == "imagenet":
      x = layers.max_pool(x, 3, 2, padding=((1, 1), (1, 1)))
    stages = []
    dilation = 1
    for s, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      stride = 2 if s > 0 else 1
      previous = dilation
      if s >= num_stages - self.dilate_last:
        dilation, stride = dilation * stride, 1
      for b in range(num_blocks):
        # Dilation is a Bottleneck field only; undilated models build blocks as before.
        dilated = {"dilation": previous if b == 0 else dilation} if self.dilate_last else {}
        x = self.block_cls(
            features=width,
            stride=stride if b == 0 else 1,
            activation=self.activation,
            norm=self.norm,
            dtype=dtype,
            name=f"layer{s + 1}_{b}",
            **dilated,
        )(x, use_batch_stats)
        x = self.insert(f"layer{s + 1}_{b}", x, use_batch_stats, placement="block")
      x = self.insert(f"stage{s + 1}", x, use_batch_stats)
      stages.append(x)
    return Features(tuple(stages), jnp.mean(x, axis=(1, 2)) if pool else None)


CifarResNet = functools.partial(ResNet, block_cls=BasicBlock, stem="cifar")
ResNet20 = functools.partial(CifarResNet, stage_sizes=(3, 3, 3), widths=(64, 128, 256))
ResNet20Tiny = functools.partial(CifarResNet, stage_sizes=(1, 1, 1), widths=(8, 16, 32))
# ResNet-14 with 16-32-64 channels: the small ResNet of the denoising experiments on the digits.
ResNet14Small = functools.partial(CifarResNet, stage_sizes=(2, 2, 2), widths=(16, 32, 64))

ImageNetResNet = functools.partial(ResNet, block_cls=Bottleneck, stem="imagenet",
                                   widths=(64, 128, 256, 512))
ResNet50 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3))
ResNet101 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 23, 3))
ResNet152 = functools.partial(ImageNetResNet, stage_sizes=(3, 8, 36, 3))
# ResNeXt-101 32x8d (Xie et al. 2017), torchvision's layout: inner width
# planes * 8 / 64 * 32 = 4 planes, in 32 groups (the CAAD 2018 denoising entry).
ResNeXt101_32x8d = functools.partial(
    ImageNetResNet, stage_sizes=(3, 4, 23, 3),
    block_cls=functools.partial(Bottleneck, width_multiplier=4, groups=32))
WideResNet50_2 = functools.partial(
    ImageNetResNet, stage_sizes=(3, 4, 6, 3),
    block_cls=functools.partial(Bottleneck, width_multiplier=2))
ResNet50Tiny = functools.partial(ImageNetResNet, stage_sizes=(1, 1, 1, 1),
                                 widths=(8, 16, 32, 64))
# torchvision's FCN / DeepLab backbones: output stride 8, the variables of ResNet-50/101.
ResNet50Dilated = functools.partial(ResNet50, dilate_last=2)
ResNet101Dilated = functools.partial(ResNet101, dilate_last=2)
ResNet50DilatedTiny = functools.partial(ResNet50Tiny, dilate_last=2)
