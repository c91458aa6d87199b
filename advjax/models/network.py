"""The shape every advjax model shares: input normalisation, a backbone, a head.

    logits = Network(backbone, head).apply(variables, x, train=False)

* `Network` maps images x [batch, height, width, channels] in [0, 1] to the
  network's input space, (x - mean) / std, in the compute dtype, runs the
  backbone and then the head, and returns float32 outputs: [batch, classes]
  logits for a classifier head, [batch, height, width, classes] for a dense
  (segmentation) head. Attacks and their epsilons therefore live in pixel space.
* A backbone (`Backbone`) returns `Features`: the output of each stage
  (`stages`, finest first) and, when the head asks for it, the pooled vector
  its classifier reads (`pooled`: global average pooling for ResNets and
  EfficientNets, flatten + dense + dropout for the convnet).
* A head reads the features: `ClassifierHead` is the dense classifier on the
  pooled vector; segmentation heads (`advjax.models.fcn`) read the stages.
* Blocks can be inserted into any backbone by name (`advjax.models.blocks`):
  a backbone calls `self.insert(position, x, ...)` at the end of every stage
  ('stage1', 'stage2', ...) and of every residual block ('layer2_0', ...).

The backbone's and the head's variables live at the top level of the
network's variable tree (linen's `share_scope`), exactly where a monolithic
model would keep them: 'conv1', 'layer1_0', 'fc', ... . So parameter paths
follow the torchvision names `advjax.bridge` maps, and a model's initial
values do not depend on how it is split into parts.

`use_batch_stats` (default: `train`) selects BatchNorm's batch statistics
independently of dropout, e.g. to attack a model as it is trained. Whenever it
is true the running statistics are updated, so pass
`mutable=['batch_stats']` (or every statistics collection of the variables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.errors import ConfigError
from advjax import registry
from advjax.models import activations, blocks, layers, norms


class Features(NamedTuple):
  """What a backbone hands to a head.

  Attributes:
    stages: the output of each stage, [batch, H_s, W_s, C_s], finest first.
    pooled: [batch, D] the vector a classifier reads, or None when not asked for.
  """
  stages: tuple[jax.Array, ...]
  pooled: jax.Array | None


class Backbone(nn.Module):
  """Base class of the feature extractors; subclasses write the architecture.

  A subclass implements a compact `__call__(x, train, use_batch_stats, pool)`
  returning `Features` (x already normalised, in `self.compute_dtype`), calls
  `self.insert(...)` wherever a block may be inserted, and lists those
  positions in `positions()`.

  Attributes:
    activation: `activations.ACTIVATIONS` name.
    norm: `norms.NORMS` name.
    dtype: compute dtype name, 'float32' or 'bfloat16'.
    insert_block: a `blocks.BLOCKS` name (with arguments), or '' for none.
    insert_after: where to insert it: 'stages' (after every stage), 'blocks'
      (after every residual block) or comma-separated positions ('stage2,stage3').
  """

  activation: str = "relu"
  norm: str = "batchnorm"
  dtype: str = "float32"
  insert_block: str = ""
  insert_after: str = "stages"

  @property
  def compute_dtype(self) -> Any:
    return layers.compute_dtype(self.dtype)

  def positions(self) -> dict[str, tuple[str, ...]]:
    """The insertion positions of this architecture, by placement ('stage', 'block')."""
    return {"stage": (), "block": ()}

  def insert(self, position: str, x: jax.Array, use_batch_stats: bool, placement: str = "stage") -> jax.Array:
    """Applies the inserted block at `position` if the model asks for one there; else returns x."""
    if not self.insert_block or not _selected(self.insert_after, position, placement):
      return x
    base, _ = registry.parse_name(self.insert_block)
    block = blocks.make_block(self.insert_block, norm=self.norm, dtype=self.compute_dtype, placement=placement,
                              name=f"{position}_{base}")
    return block(x, use_batch_stats)

  def check_insertion(self) -> None:
    """Raises ConfigError if `insert_after` names a position this architecture does not have."""
    if not self.insert_block:
      return
    if self.insert_after in ("stages", "blocks"):
      available = self.positions()[self.insert_after[:-1]]
      if not available:
        raise ConfigError(f"model.insert_after={self.insert_after!r}: this architecture has no such positions")
      return
    known = set(self.positions()["stage"]) | set(self.positions()["block"])
    unknown = [p for p in _names(self.insert_after) if p not in known]
    if unknown:
      raise ConfigError(f"model.insert_after: unknown position(s) {', '.join(unknown)}; known: "
                        f"'stages', 'blocks', {', '.join(sorted(known))}")


def _names(insert_after: str) -> list[str]:
  return [p.strip() for p in insert_after.split(",") if p.strip()]


def _selected(insert_after: str, position: str, placement: str) -> bool:
  if insert_after in ("stages", "blocks"):
    return insert_after == placement + "s"
  return position in _names(insert_after)


class ClassifierHead(nn.Module):
  """A dense layer from the backbone's pooled vector to class logits.

  Attributes:
    num_classes: number of logits.
    dense_name: the layer's name ('fc' in torchvision's models, 'fc2' in the convnet).
    dtype: compute dtype name.
  """

  num_classes: int
  dense_name: str = "fc"
  dtype: str = "float32"

  needs_pooled = True

  @nn.compact
  def __call__(self, features: Features, train: bool, use_batch_stats: bool,
               image_shape: Sequence[int]) -> jax.Array:
    """features.pooled [batch, D] -> [batch, num_classes] logits."""
    del train, use_batch_stats, image_shape
    return layers.dense(self.num_classes, dtype=layers.compute_dtype(self.dtype), name=self.dense_name)(
        features.pooled)

  def owns(self, key: str) -> bool:
    """Whether a top-level variable name belongs to this head."""
    return key == self.dense_name


class Network(nn.Module):
  """Input normalisation, backbone and head; the model every registry name builds.

  Attributes:
    backbone: a `Backbone`.
    head: a head (`ClassifierHead`, or a dense head of `advjax.models.fcn`).
    mean: per-channel input mean in pixel space (length channels, or 1).
    std: per-channel input standard deviation, same length as `mean`.
    frozen_backbone: the backbone always normalises with its running
      statistics (its weights are frozen by the optimiser, see
      `advjax.training.optim`); the head trains as usual.
  """

  backbone: nn.Module
  head: nn.Module
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.5,)
  frozen_backbone: bool = False

  def setup(self):
    # The parts' variables live at the top level, as in a monolithic model.
    nn.share_scope(self, self.backbone)
    nn.share_scope(self, self.head)

  def __call__(self, x: jax.Array, train: bool = False, use_batch_stats: bool | None = None) -> jax.Array:
    """Computes the outputs.

    Args:
      x: [batch, height, width, channels] images in [0, 1].
      train: enables dropout (needs the 'dropout' rng) and, by default, batch
        statistics.
      use_batch_stats: whether BatchNorm uses batch statistics; None = train.

    Returns:
      float32 logits: [batch, classes], or [batch, height, width, classes]
      for a dense head.
    """
    use_batch_stats = layers.resolve_batch_stats(train, use_batch_stats)
    h = layers.normalize_input(x, self.mean, self.std, self.backbone.compute_dtype)
    features = self.backbone(h, train=train, use_batch_stats=use_batch_stats and not self.frozen_backbone,
                             pool=self.head.needs_pooled)
    out = self.head(features, train=train, use_batch_stats=use_batch_stats, image_shape=x.shape[1:3])
    return out.astype(jnp.float32)

  # The injected names, read by the code that derives twins of a model (SAT, AdvProp).
  @property
  def activation(self) -> str:
    return self.backbone.activation

  @property
  def norm(self) -> str:
    return self.backbone.norm

  def with_options(self, **fields) -> "Network":
    """A copy whose backbone (and head, where it has the field) use other injected names.

    Args:
      **fields: e.g. norm='aux_batchnorm:adv' or activation='relu_softplus_grad:10'.

    Returns:
      The Network with the same variable tree and the new options.
    """
    head_fields = {k: v for k, v in fields.items() if hasattr(self.head, k)}
    return self.clone(backbone=self.backbone.clone(**fields), head=self.head.clone(**head_fields))

  def head_owns(self, key: str) -> bool:
    """Whether a top-level variable name belongs to the head (the rest is the backbone's)."""
    return self.head.owns(key)
