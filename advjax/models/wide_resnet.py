"""Wide residual networks (Zagoruyko & Komodakis, 2016).

WRN-d-k is a pre-activation ResNet (see `preact_resnet.py`) with a 16-channel
3x3 stem and three stages of n "wide basic" blocks of widths 16k, 32k, 64k
(strides 1, 2, 2). The depth d = 6n + 4 counts the stem, the 6n block
convolutions and the three 1x1 projections that open the stages. Dropout
between the two convolutions of a block is optional and off by default.

Presets:
  wrn28_10   n = 4, k = 10 (36.5M parameters), the usual CIFAR robust model.
  wrn32_10   Madry et al.'s "w32-10" (also used by the UAT paper): 32 is not
             of the form 6n + 4; their network has 5 blocks per stage with
             widths 16-160-320-640.
  wrn16_2    n = 2, k = 2.
  wrn_tiny   n = 1, widths 4-8-16-32, for tests.
"""

from __future__ import annotations

import functools

from advjax.errors import ConfigError
from advjax.models.preact_resnet import PreActResNet


def wide_resnet(depth: int, widen_factor: int, **kwargs) -> PreActResNet:
  """Builds WRN-depth-widen_factor; `kwargs` are `PreActResNet` fields.

  Args:
    depth: 6n + 4 for n blocks per stage.
    widen_factor: k; stage widths are 16k, 32k, 64k.
    **kwargs: remaining `PreActResNet` fields (activation, norm, dropout, ...).

  Returns:
    The (unbound) linen module.

  Raises:
    ConfigError: if depth is not 6n + 4.
  """
  if (depth - 4) % 6:
    raise ConfigError(f"wide ResNet depth must be 6n + 4, got {depth}")
  n = (depth - 4) // 6
  return PreActResNet(stage_sizes=(n, n, n),
                      widths=(16 * widen_factor, 32 * widen_factor, 64 * widen_factor),
                      stem_width=16, **kwargs)


WRN28_10 = functools.partial(wide_resnet, 28, 10)
WRN32_10 = functools.partial(PreActResNet, stage_sizes=(5, 5, 5), widths=(160, 320, 640),
                             stem_width=16)
WRN16_2 = functools.partial(wide_resnet, 16, 2)
WRNTiny = functools.partial(PreActResNet, stage_sizes=(1, 1, 1), widths=(8, 16, 32),
                            stem_width=4)
