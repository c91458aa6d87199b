"""VGG-16 (Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks"), as a backbone.

Configuration D of the paper: thirteen 3x3 convolutions (stride 1, padding 1,
with bias), each followed by the activation, in five stages of 2, 2, 3, 3
and 3 convolutions with 64, 128, 256, 512 and 512 filters; every stage ends
with a 2x2 max pool of stride 2. The stage outputs are the pooled maps
pool1..pool5 at strides 2, 4, 8, 16, 32, the maps Long et al.'s FCN-8s reads
(pool3, pool4 and, through fc6/fc7, pool5; `advjax.models.fcn`).

Choices, documented because they differ from torchvision's `vgg16`:

* Normalisation. The model's `norm` is honoured after every convolution.
  `norm='none'` is the paper's VGG-16 (and Long et al.'s FCN backbone);
  'batchnorm', the library-wide default of `create_model`, gives the layout
  of torchvision's `vgg16_bn`.
* Pooling rounds up (Caffe's "ceil mode", which the original VGG and FCN
  models were trained with): an odd map of side n pools to ceil(n / 2), its
  last row and column pooled alone. On even sides it equals torchvision's
  floor mode; on odd ones no pixel is dropped, and no map ever shrinks to
  zero, so the tiny variant runs on 8x8 images.
* The pooled vector, for the 'classifier' head, is the global average of
  pool5 ([batch, 512]) rather than the paper's three fully connected layers
  (fc6/fc7 of 4096 units on the flattened 7x7 map): a dense classifier on it
  works at any input size and costs 512 * classes parameters instead of 120M.
  The 4096-wide fc6/fc7 of FCN-8s live in the segmentation head instead
  ('fcn8s_fc'), where they are convolutions.

Submodules are named after the paper and Caffe's prototxt: conv{s}_{i} and
bn{s}_{i} for stage s, convolution i (1-based).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import activations, layers, norms
from advjax.models.network import Backbone, Features


class VGG(Backbone):
  """Stages of 3x3 conv-norm-act layers, each stage ending with a 2x2 max pool.

  Stage s ('stage1'..'stage5') ends after its pool; these are the insertion
  positions. The pooled vector is the global average of the last stage.

  Attributes:
    stage_sizes: convolutions per stage.
    widths: filters of every convolution of a stage.
    (activation, norm, dtype, insert_block, insert_after: see `Backbone`.)
  """

  stage_sizes: Sequence[int] = (2, 2, 3, 3, 3)
  widths: Sequence[int] = (64, 128, 256, 512, 512)

  def positions(self) -> dict[str, tuple[str, ...]]:
    return {"stage": tuple(f"stage{s + 1}" for s in range(len(self.stage_sizes))), "block": ()}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_batch_stats: bool, pool: bool = True) -> Features:
    """x: [batch, H, W, channels] normalised -> Features (stage s: ceil(H / 2^s); pooled [batch, C])."""
    del train  # No dropout in the convolutional part.
    dtype = self.compute_dtype
    stages = []
    for s, (num_convs, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for i in range(num_convs):
        x = layers.conv(width, 3, use_bias=True, dtype=dtype, name=f"conv{s + 1}_{i + 1}")(x)
        x = norms.make_norm(self.norm, use_running_average=not use_batch_stats, dtype=dtype,
                             name=f"bn{s + 1}_{i + 1}")(x)
        x = activations.get_activation(self.activation)(x)
      # 'SAME' pads the odd last row/column with -inf at the end: ceil mode.
      x = layers.max_pool(x, 2, 2, padding="SAME")
      x = self.insert(f"stage{s + 1}", x, use_batch_stats)
      stages.append(x)
    return Features(tuple(stages), jnp.mean(x, axis=(1, 2)) if pool else None)


VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3), widths=(64, 128, 256, 512, 512))
VGG16Tiny = functools.partial(VGG, stage_sizes=(1, 1, 1, 1, 1), widths=(8, 8, 16, 16, 16))
