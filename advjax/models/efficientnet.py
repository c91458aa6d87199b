"""EfficientNet-B0..B7 (Tan & Le, 2019), the default architectures of AdvProp.

AdvProp (Xie thesis, ch. 7, sec. 7.5.1) trains the whole EfficientNet family,
"ranging from the light-weight EfficientNet-B0 to the large EfficientNet-B7".
B0 is a stack of seven stages of MBConv blocks (inverted residuals, Sandler
et al. 2018):

  expand (1x1 conv to expand_ratio * C, norm, act; skipped when the ratio is 1)
  -> depthwise k x k conv (stride s), norm, act
  -> squeeze-excitation: global pool, 1x1 conv to C_in / 4, act, 1x1 conv,
     sigmoid, rescale the channels
  -> project (1x1 conv to C_out, norm; no activation)
  -> + input, when s = 1 and C_in = C_out, after drop connect (stochastic
     depth, the rate growing linearly with the block index to `drop_connect`)

between a 3x3 stride-2 stem of 32 filters and a 1x1 head of 1280, global
average pooling, dropout and a dense layer. B1..B7 scale B0 by compound
scaling: widths by `width` (rounded to multiples of 8), stage depths by
`depth` (rounded up), the input resolution 224..600 and the dropout rate
(`RESOLUTIONS`, `SCALING`). The activation (default 'silu', the paper's swish)
and the normalisation are injected by name like in every advjax model; for
AdvProp the norm is 'batchnorm:0.99' (BN momentum 0.99) and its auxiliary
twin comes from `advjax.models.aux_bn`.

Convolutions are padded symmetrically (k // 2) as in torchvision's
EfficientNets, so B0 has torchvision's 5,288,548 parameters at 1000 classes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import activations, layers, norms
from advjax.models.network import Backbone, Features

# (expand_ratio, kernel, stride, output filters, repeats) of B0's seven stages.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Compound scaling (width, depth, dropout) and input resolution per variant.
SCALING = {
    "b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3), "b3": (1.2, 1.4, 0.3),
    "b4": (1.4, 1.8, 0.4), "b5": (1.6, 2.2, 0.4), "b6": (1.8, 2.6, 0.5), "b7": (2.0, 3.1, 0.5),
}
RESOLUTIONS = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
SE_RATIO = 0.25
DROP_CONNECT = 0.2


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Scales a filter count by `width`, rounded to a multiple of `divisor` and never down by > 10%."""
  scaled = filters * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
  """Scales a stage's block count by `depth`, rounded up."""
  return int(math.ceil(depth * repeats))


class MBConv(nn.Module):
  """Mobile inverted bottleneck with squeeze-excitation.

  Attributes:
    features: output channels.
    expand_ratio: width of the inner layers in multiples of the input width.
    kernel: depthwise kernel size.
    stride: depthwise stride.
    se_ratio: squeeze width as a fraction of the block's input width.
    drop_connect: probability of dropping the residual branch per example.
    activation: `activations.ACTIVATIONS` name.
    norm: `norms.NORMS` name.
    dtype: jnp compute dtype.
  """

  features: int
  expand_ratio: int
  kernel: int
  stride: int
  se_ratio: float
  drop_connect: float
  activation: str
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool) -> jax.Array:
    """x: [batch, H, W, C] -> [batch, H / stride, W / stride, features]."""
    norm = functools.partial(norms.make_norm, self.norm, use_running_average=not use_batch_stats,
                             dtype=self.dtype)
    act = lambda: activations.get_activation(self.activation)  # noqa: E731  (one per use site)
    channels = x.shape[-1]
    inner = channels * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = layers.conv(inner, 1, dtype=self.dtype, name="expand_conv")(y)
      y = act()(norm(name="expand_bn")(y))
    y = layers.conv(inner, self.kernel, stride=self.stride, groups=inner, dtype=self.dtype, name="dw_conv")(y)
    y = act()(norm(name="dw_bn")(y))
    squeeze = max(1, int(channels * self.se_ratio))
    s = jnp.mean(y, axis=(1, 2), keepdims=True)
    s = act()(layers.conv(squeeze, 1, use_bias=True, dtype=self.dtype, name="se_reduce")(s))
    s = layers.conv(inner, 1, use_bias=True, dtype=self.dtype, name="se_expand")(s)
    y = y * jax.nn.sigmoid(s)
    y = layers.conv(self.features, 1, dtype=self.dtype, name="project_conv")(y)
    y = norm(name="project_bn")(y)
    if self.stride == 1 and channels == self.features:
      if self.drop_connect > 0:
        # One Bernoulli per example (broadcast over H, W, C), rescaled by 1 / keep.
        y = nn.Dropout(self.drop_connect, broadcast_dims=(1, 2, 3), deterministic=not train)(y)
      y = y + x
    return y


class EfficientNet(Backbone):
  """EfficientNet with compound scaling of a stage table.

  Stage s ('stage1'..'stage7' for B0) ends after its last MBConv block
  ('block{s}_{b}', the block positions). The pooled vector is the 1x1 head
  convolution's output, normalised, activated, averaged and dropped out.

  Attributes:
    width: width multiplier (filters).
    depth: depth multiplier (blocks per stage).
    dropout: dropout rate before the classifier.
    drop_connect: final stochastic-depth rate (0 disables drop connect).
    stages: (expand_ratio, kernel, stride, filters, repeats) per stage, unscaled.
    stem_features: unscaled stem width.
    head_features: unscaled head width.
    se_ratio: squeeze-excitation ratio.
    (activation, norm, dtype, insert_block, insert_after: see `Backbone`.)
  """

  width: float = 1.0
  depth: float = 1.0
  dropout: float = 0.2
  drop_connect: float = DROP_CONNECT
  stages: Sequence[Sequence[int]] = B0_STAGES
  stem_features: int = 32
  head_features: int = 1280
  se_ratio: float = SE_RATIO
  activation: str = "silu"

  def _repeats(self) -> list[int]:
    return [round_repeats(stage[4], self.depth) for stage in self.stages]

  def positions(self) -> dict[str, tuple[str, ...]]:
    repeats = self._repeats()
    return {"stage": tuple(f"stage{s + 1}" for s in range(len(repeats))),
            "block": tuple(f"block{s + 1}_{b}" for s, n in enumerate(repeats) for b in range(n))}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool, pool: bool = True) -> Features:
    """x: [batch, height, width, channels] normalised -> Features (pooled [batch, head width])."""
    dtype = self.compute_dtype
    x = layers.conv(round_filters(self.stem_features, self.width), 3, stride=2, dtype=dtype, name="stem_conv")(x)
    x = norms.make_norm(self.norm, use_running_average=not use_batch_stats, dtype=dtype, name="stem_bn")(x)
    x = activations.get_activation(self.activation)(x)
    repeats = self._repeats()
    total, index = sum(repeats), 0
    stages = []
    for s, ((expand, kernel, stride, filters, _), n) in enumerate(zip(self.stages, repeats)):
      for b in range(n):
        x = MBConv(
            features=round_filters(filters, self.width),
            expand_ratio=expand,
            kernel=kernel,
            stride=stride if b == 0 else 1,
            se_ratio=self.se_ratio,
            drop_connect=self.drop_connect * index / total,
            activation=self.activation,
            norm=self.norm,
            dtype=dtype,
            name=f"block{s + 1}_{b}",
        )(x, train, use_batch_stats)
        x = self.insert(f"block{s + 1}_{b}", x, use_batch_stats, placement="block")
        index += 1
      x = self.insert(f"stage{s + 1}", x, use_batch_stats)
      stages.append(x)
    if not pool:
      return Features(tuple(stages), None)
    x = layers.conv(round_filters(self.head_features, self.width), 1, dtype=dtype, name="head_conv")(x)
    x = norms.make_norm(self.norm, use_running_average=not use_batch_stats, dtype=dtype, name="head_bn")(x)
    x = activations.get_activation(self.activation)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return Features(tuple(stages), x)


def _variant(key: str):
  width, depth, dropout = SCALING[key]
  return functools.partial(EfficientNet, width=width, depth=depth, dropout=dropout)


EfficientNetB0 = _variant("b0")
EfficientNetB1 = _variant("b1")
EfficientNetB2 = _variant("b2")
EfficientNetB3 = _variant("b3")
EfficientNetB4 = _variant("b4")
EfficientNetB5 = _variant("b5")
EfficientNetB6 = _variant("b6")
EfficientNetB7 = _variant("b7")
# Three one-block stages of B0's kinds (no expansion; expansion with stride
# 2; 5x5 with a drop-connect residual), narrow: seconds to compile.
EfficientNetTiny = functools.partial(
    EfficientNet, stages=((1, 3, 1, 8, 1), (6, 3, 2, 16, 1), (6, 5, 1, 16, 1)),
    stem_features=8, head_features=32, dropout=0.2)
