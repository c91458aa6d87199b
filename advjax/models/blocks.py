"""Blocks inserted into a backbone by name: the seam for feature denoising and its kin.

A backbone calls `hook(position, x)` at the end of each stage ('stage1',
'stage2', ...) and of each residual block ('layer2_0', ...); when the model's
`insert_block` names a registered block and `insert_after` selects that
position, the block is built there and applied to the features. The block's
variables live beside the backbone's, under the name '<position>_block', so a
model without insertions keeps exactly its variable tree.

A block is a linen Module built by its registered factory as

    factory(*args, norm=..., dtype=..., placement=..., name=...)

where `args` are the strings after a colon in the registry name
('nonlocal:gaussian' -> ('gaussian',)), `norm` the model's normalisation name
(`norms.make_norm`), `dtype` the compute dtype and `placement` 'stage' or
'block' (sec. 4.6 of the Xie thesis subsamples non-local keys when blocks
follow every residual block). It is called as `block(x, use_batch_stats)` on
x [batch, height, width, channels] and returns the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from advjax.errors import ConfigError
from advjax.registry import Registry

BlockFactory = Callable[..., nn.Module]
BLOCKS = Registry("block")
PLACEMENTS = ("stage", "block")


def register_block(name: str, factory: BlockFactory) -> None:
  """Adds a block to the registry (see the module docstring for the factory's signature)."""
  BLOCKS.register(name, factory)


def make_block(spec: str, *, norm: str, dtype, placement: str, name: str) -> nn.Module:
  """Builds the registered block `spec` ('name' or 'name:arg1,arg2') for one position.

  Raises:
    ConfigError: unknown block, bad arguments or placement.
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"block placement {placement!r} must be one of {', '.join(PLACEMENTS)}")
  return BLOCKS.build(spec, norm=norm, dtype=dtype, placement=placement, name=name)


def check_block(spec: str) -> None:
  """Raises ConfigError unless `spec` names a registered block."""
  BLOCKS.check(spec)
