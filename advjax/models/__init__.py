"""Image models, built by name: a backbone from `MODELS` and a head from `HEADS`.

Every model is a `network.Network` with the same interface:

    logits = model.apply(variables, x, train=False)           # eval
    logits, updates = model.apply(variables, x, train=True,   # training
                                  mutable=["batch_stats"],
                                  rngs={"dropout": key})

* `x: [batch, height, width, channels]` float32 in [0, 1]: attacks and their
  epsilons live in pixel space; the model normalises `(x - mean) / std` itself.
* Returns float32 logits, whatever the compute dtype: `[batch, num_classes]`
  with the classifier head, `[batch, height, width, num_classes]` with a
  dense head.
* `use_batch_stats` (default: `train`) selects BatchNorm's batch statistics
  independently of dropout, e.g. to attack a model as it is trained. Whenever
  it is true the running statistics are updated, so pass
  `mutable=["batch_stats"]`.
* Activation and normalisation are chosen by name (`activations.ACTIVATIONS`,
  `norms.NORMS`); parameters are float32, compute is float32 or bfloat16.
* A registered block (`blocks.BLOCKS`) can be inserted after any stage or
  residual block by name (`insert_block`, `insert_after`).

Backbones (`MODELS`), each with a `*_tiny` sibling for tests:
  convnet, convnet_tiny              universality-paper convnet (convnet.py)
  convnet_dense, convnet_dense_tiny  the same, stages read before each pool (FCN backbones)
  resnet20, resnet20_tiny            CIFAR ResNet-20, 64-128-256 (resnet.py)
  resnet14_small                     ResNet-14, 16-32-64, for the digits (feature denoising)
  preact_resnet18(_tiny)             pre-activation ResNet-18 (preact_resnet.py)
  wrn28_10, wrn32_10, wrn16_2, wrn_tiny   wide ResNets (wide_resnet.py)
  resnet50, resnet101, resnet152, resnext101_32x8d, wide_resnet50_2, resnet50_tiny
                                     torchvision-layout ImageNet ResNets
  efficientnet_b0 .. efficientnet_b7, efficientnet_tiny
                                     EfficientNets, AdvProp's models (efficientnet.py)
  resnet50_dilated, resnet101_dilated, resnet50_dilated_tiny
                                     output stride 8, torchvision's FCN backbones (resnet.py)
  vgg16, vgg16_tiny                  VGG-16, FCN-8s' backbone (vgg.py)

Heads (`HEADS`): 'classifier', the dense layer on the backbone's pooled vector;
segmentation heads (fcn.py): 'fcn' and 'fcn_aux' (torchvision's FCN head,
without and with its auxiliary classifier; `resnet50_dilated` + 'fcn_aux' is
torchvision's fcn_resnet50), 'fcn8s' and 'fcn8s_fc' (Long et al.'s FCN-8s
skips, without and with the 4096-wide fc6/fc7; `vgg16` + 'fcn8s_fc' with
norm='none' is their VGG-16 FCN-8s).
Blocks (`blocks.BLOCKS`): 'denoise:<operation>', the feature-denoising blocks
of the Xie thesis, ch. 4 (denoising.py).
Adding a backbone, a head or a block is one module and one `register_*` call.

`aux_bn` selects, initialises and exports auxiliary BatchNorm sets (AdvProp).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn

from advjax import typed_config
from advjax.errors import ConfigError
from advjax.models import (activations, aux_bn, blocks, convnet, denoising, efficientnet, fcn, layers, network, norms,
                           preact_resnet, resnet, vgg, wide_resnet)
from advjax.registry import Registry
from advjax.models.network import Backbone, ClassifierHead, Features, Network


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered backbone.

  Attributes:
    backbone: builds the `Backbone` from (activation, norm, dtype, insert_block,
      insert_after, **overrides).
    classifier_name: the name of its classifier's dense layer ('fc', or 'fc2' for the convnet).
  """
  backbone: Callable[..., nn.Module]
  classifier_name: str = "fc"


MODELS = Registry("model")
HeadFactory = Callable[..., nn.Module]
HEADS = Registry("head")


def register_model(name: str, backbone: Callable[..., nn.Module], classifier_name: str = "fc") -> None:
  """Adds a backbone to the registry (see `ModelSpec`)."""
  MODELS.register(name, ModelSpec(backbone, classifier_name))


def register_head(name: str, factory: HeadFactory) -> None:
  """Adds a head to the registry.

  Args:
    name: the registry name used in configs (`model.head`).
    factory: called as `factory(num_classes=, activation=, norm=, dtype=, spec=)`
      with the backbone's `ModelSpec`; returns a linen Module with a class
      attribute `needs_pooled` (whether it reads `Features.pooled`), a method
      `owns(top_level_name) -> bool` naming its variables, and
      `__call__(features, train, use_batch_stats, image_shape) -> outputs`.
  """
  HEADS.register(name, factory)


def _classifier(*, num_classes: int, activation: str, norm: str, dtype: str, spec: ModelSpec) -> nn.Module:
  del activation, norm
  return ClassifierHead(num_classes=num_classes, dense_name=spec.classifier_name, dtype=dtype)


register_head("classifier", _classifier)
register_head("fcn", fcn.fcn_factory())
register_head("fcn_aux", fcn.fcn_factory(aux=True))
register_head("fcn8s", fcn.fcn8s_factory())
register_head("fcn8s_fc", fcn.fcn8s_factory(fc_widths=fcn.FCN8S_FC_WIDTHS))
# Feature denoising (Xie thesis ch. 4): 'denoise:<operation>[,no_conv][,no_residual]'.
blocks.register_block("denoise", denoising.denoising_factory)

for _name, _backbone, _classifier_name in (
    ("convnet", convnet.ConvNet, "fc2"),
    ("convnet_tiny", convnet.ConvNetTiny, "fc2"),
    ("convnet_dense", convnet.ConvNetDense, "fc2"),
    ("convnet_dense_tiny", convnet.ConvNetDenseTiny, "fc2"),
    ("resnet20", resnet.ResNet20, "fc"),
    ("resnet20_tiny", resnet.ResNet20Tiny, "fc"),
    ("resnet14_small", resnet.ResNet14Small, "fc"),
    ("preact_resnet18", preact_resnet.PreActResNet18, "fc"),
    ("preact_resnet18_tiny", preact_resnet.PreActResNet18Tiny, "fc"),
    ("wrn28_10", wide_resnet.WRN28_10, "fc"),
    ("wrn32_10", wide_resnet.WRN32_10, "fc"),
    ("wrn16_2", wide_resnet.WRN16_2, "fc"),
    ("wrn_tiny", wide_resnet.WRNTiny, "fc"),
    ("resnet50", resnet.ResNet50, "fc"),
    ("resnet101", resnet.ResNet101, "fc"),
    ("resnet152", resnet.ResNet152, "fc"),
    ("resnext101_32x8d", resnet.ResNeXt101_32x8d, "fc"),
    ("wide_resnet50_2", resnet.WideResNet50_2, "fc"),
    ("resnet50_tiny", resnet.ResNet50Tiny, "fc"),
    ("efficientnet_b0", efficientnet.EfficientNetB0, "fc"),
    ("efficientnet_b1", efficientnet.EfficientNetB1, "fc"),
    ("efficientnet_b2", efficientnet.EfficientNetB2, "fc"),
    ("efficientnet_b3", efficientnet.EfficientNetB3, "fc"),
    ("efficientnet_b4", efficientnet.EfficientNetB4, "fc"),
    ("efficientnet_b5", efficientnet.EfficientNetB5, "fc"),
    ("efficientnet_b6", efficientnet.EfficientNetB6, "fc"),
    ("efficientnet_b7", efficientnet.EfficientNetB7, "fc"),
    ("efficientnet_tiny", efficientnet.EfficientNetTiny, "fc"),
    ("resnet50_dilated", resnet.ResNet50Dilated, "fc"),
    ("resnet101_dilated", resnet.ResNet101Dilated, "fc"),
    ("resnet50_dilated_tiny", resnet.ResNet50DilatedTiny, "fc"),
    ("vgg16", vgg.VGG16, "fc"),
    ("vgg16_tiny", vgg.VGG16Tiny, "fc"),
):
  register_model(_name, _backbone, _classifier_name)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`: the network, by registry names.

  Attributes:
    name: backbone, a key of `MODELS`.
    head: a key of `HEADS`, optionally with arguments ('fcn8s_fc:256,256').
    activation: a key of `activations.ACTIVATIONS`, optionally with arguments.
    norm: 'batchnorm[:momentum]', 'groupnorm' or 'none' (`norms.NORMS`).
    dtype: compute dtype, 'float32' or 'bfloat16'.
    insert_block: a block inserted into the backbone by registry name
      (`blocks.BLOCKS`, e.g. 'denoise:nonlocal_gaussian'), '' for none...
    insert_after: ...after 'stages', 'blocks' or the comma-separated positions
      of this field ('stage2,stage3').
    backbone_checkpoint: run directory whose latest checkpoint initialises the
      backbone (every variable outside the head), e.g. a robust classifier
      under a segmentation head; '' for none. The model then normalises its
      inputs with that run's dataset statistics (as pretrained backbones
      keep theirs), so fine-tunings and evaluations of it keep this field.
    freeze_backbone: with `backbone_checkpoint`, its weights stay fixed and it
      normalises with its running statistics (the robust-backbone model).
  """
  name: str = "convnet"
  head: str = "classifier"
  activation: str = "relu"
  norm: str = "batchnorm"
  dtype: str = "float32"
  insert_block: str = ""
  insert_after: str = "stages"
  backbone_checkpoint: str = ""
  freeze_backbone: bool = False

  def __post_init__(self):
    if self.dtype not in layers.DTYPES:
      raise ConfigError(f"dtype={self.dtype!r} must be one of {', '.join(layers.DTYPES)}")
    if self.freeze_backbone and not self.backbone_checkpoint:
      raise ConfigError("freeze_backbone freezes a pretrained backbone, so backbone_checkpoint must name a run")


def create_model(name: str, *, num_classes: int, activation: str = ModelConfig.activation,
                 norm: str = ModelConfig.norm, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,), dtype: str = ModelConfig.dtype, head: str = ModelConfig.head,
                 insert_block: str = ModelConfig.insert_block, insert_after: str = ModelConfig.insert_after,
                 frozen_backbone: bool = False, **overrides) -> Network:
  """Builds a registered model; every name is checked before anything runs.

  Args:
    name: a key of `MODELS` (the backbone).
    num_classes: number of output classes.
    activation: a key of `activations.ACTIVATIONS`, optionally with arguments
      ('elu:0.5', see `advjax.registry.parse_name`).
    norm: a key of `norms.NORMS`, optionally with arguments ('batchnorm:0.99').
    mean: per-channel input mean in pixel space (length channels, or 1).
    std: per-channel input standard deviation, same length as `mean`.
    dtype: compute dtype, 'float32' or 'bfloat16'.
    head: a key of `HEADS`, optionally with arguments after a colon
      ('fcn8s_fc:256,256': FCN-8s with fc layers of 256 channels).
    insert_block: a key of `blocks.BLOCKS` (with arguments), or '' for none.
    insert_after: 'stages', 'blocks' or comma-separated positions.
    frozen_backbone: the backbone normalises with its running statistics
      (see `network.Network`).
    **overrides: further fields of the backbone class (e.g. `dropout=0.3` for
      a wide ResNet).

  Returns:
    The unbound `Network`.

  Raises:
    ConfigError: an unknown model, head, activation, normalisation, dtype,
      block or insertion position.
  """
  spec = MODELS[name]
  HEADS.check(head)
  activations.check_activation(activation)
  norms.check_norm(norm)
  layers.compute_dtype(dtype)
  try:
    backbone = spec.backbone(activation=activation, norm=norm, dtype=dtype, insert_block=insert_block,
                             insert_after=insert_after, **overrides)
  except TypeError as e:
    raise ConfigError(f"model {name!r}: {e}") from None
  if insert_block:
    blocks.check_block(insert_block)
    backbone.check_insertion()
  head_module = HEADS.build(head, num_classes=num_classes, activation=activation, norm=norm, dtype=dtype, spec=spec)
  return Network(backbone=backbone, head=head_module, mean=tuple(float(m) for m in mean),
                 std=tuple(float(s) for s in std), frozen_backbone=frozen_backbone)


def from_config(m: Mapping[str, Any] | ModelConfig, *, num_classes: int, mean: Sequence[float],
                std: Sequence[float]) -> Network:
  """`create_model` from a config's `model` block (a ConfigDict, a run's saved config.json dict, a ModelConfig).

  Args:
    m: the block; fields it lacks (a run saved before they existed) take
      `ModelConfig`'s defaults.
    num_classes: the dataset's classes.
    mean, std: the input normalisation (the dataset's, or a pretrained backbone's).

  Raises:
    ConfigError: a bad field or registry name.
  """
  cfg = typed_config.from_mapping(ModelConfig, m, "config.model")
  return create_model(cfg.name, num_classes=num_classes, activation=cfg.activation, norm=cfg.norm, mean=mean,
                      std=std, dtype=cfg.dtype, head=cfg.head, insert_block=cfg.insert_block,
                      insert_after=cfg.insert_after, frozen_backbone=cfg.freeze_backbone)


__all__ = ["Backbone", "ClassifierHead", "Features", "HEADS", "MODELS", "ModelConfig", "ModelSpec", "Network",
           "activations", "aux_bn", "blocks", "create_model", "fcn", "from_config", "layers", "network", "norms",
           "register_head", "register_model"]
