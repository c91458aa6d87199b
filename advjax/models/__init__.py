"""Image classifiers, built by name.

Every model is a linen Module with the same interface:

    logits = model.apply(variables, x, train=False)           # eval
    logits, updates = model.apply(variables, x, train=True,   # training
                                  mutable=["batch_stats"],
                                  rngs={"dropout": key})

* `x: [batch, height, width, channels]` float32 in [0, 1]: attacks and their
  epsilons live in pixel space; the model normalises `(x - mean) / std` itself.
* Returns `[batch, num_classes]` float32 logits, whatever the compute dtype.
* `use_batch_stats` (default: `train`) selects BatchNorm's batch statistics
  independently of dropout, e.g. to attack a model as it is trained. Whenever
  it is true the running statistics are updated, so pass
  `mutable=["batch_stats"]`.
* Activation and normalisation are chosen by name (`layers.ACTIVATIONS`,
  `layers.NORMS`); parameters are float32, compute is float32 or bfloat16.

Registry (`MODELS`), each with a `*_tiny` sibling for tests:
  convnet, convnet_tiny              universality-paper convnet (convnet.py)
  resnet20, resnet20_tiny            CIFAR ResNet-20, 64-128-256 (resnet.py)
  preact_resnet18(_tiny)             pre-activation ResNet-18 (preact_resnet.py)
  wrn28_10, wrn32_10, wrn16_2, wrn_tiny   wide ResNets (wide_resnet.py)
  resnet50, resnet101, resnet152, wide_resnet50_2, resnet50_tiny
                                     torchvision-layout ImageNet ResNets
  efficientnet_b0 .. efficientnet_b7, efficientnet_tiny
                                     EfficientNets, AdvProp's models (efficientnet.py)

`aux_bn` selects, initialises and exports auxiliary BatchNorm sets (AdvProp).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from advjax.errors import unknown_name
from advjax.models import aux_bn, convnet, efficientnet, layers, preact_resnet, resnet, wide_resnet

MODELS = {
    "convnet": convnet.ConvNet,
    "convnet_tiny": convnet.ConvNetTiny,
    "resnet20": resnet.ResNet20,
    "resnet20_tiny": resnet.ResNet20Tiny,
    "preact_resnet18": preact_resnet.PreActResNet18,
    "preact_resnet18_tiny": preact_resnet.PreActResNet18Tiny,
    "wrn28_10": wide_resnet.WRN28_10,
    "wrn32_10": wide_resnet.WRN32_10,
    "wrn16_2": wide_resnet.WRN16_2,
    "wrn_tiny": wide_resnet.WRNTiny,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    "wide_resnet50_2": resnet.WideResNet50_2,
    "resnet50_tiny": resnet.ResNet50Tiny,
    "efficientnet_b0": efficientnet.EfficientNetB0,
    "efficientnet_b1": efficientnet.EfficientNetB1,
    "efficientnet_b2": efficientnet.EfficientNetB2,
    "efficientnet_b3": efficientnet.EfficientNetB3,
    "efficientnet_b4": efficientnet.EfficientNetB4,
    "efficientnet_b5": efficientnet.EfficientNetB5,
    "efficientnet_b6": efficientnet.EfficientNetB6,
    "efficientnet_b7": efficientnet.EfficientNetB7,
    "efficientnet_tiny": efficientnet.EfficientNetTiny,
}


def create_model(name: str, *, num_classes: int, activation: str = "relu",
                 norm: str = "batchnorm", mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,), dtype: str = "float32",
                 **overrides) -> nn.Module:
  """Builds a registered model; every name is checked before anything runs.

  Args:
    name: a key of `MODELS`.
    num_classes: number of output logits.
    activation: a key of `layers.ACTIVATIONS`, optionally with arguments
      ('elu:0.5', see `layers.parse_name`).
    norm: a key of `layers.NORMS`, optionally with arguments ('batchnorm:0.99').
    mean: per-channel input mean in pixel space (length channels, or 1).
    std: per-channel input standard deviation, same length as `mean`.
    dtype: compute dtype, 'float32' or 'bfloat16'.
    **overrides: further fields of the model class (e.g. `dropout=0.3` for a
      wide ResNet).

  Returns:
    The unbound linen Module.

  Raises:
    ConfigError: for an unknown model, activation, normalisation or dtype.
  """
  if name not in MODELS:
    raise unknown_name("model", name, MODELS)
  layers.check_activation(activation)
  layers.check_norm(norm)
  layers.compute_dtype(dtype)
  return MODELS[name](num_classes=num_classes, activation=activation, norm=norm,
                      mean=tuple(float(m) for m in mean),
                      std=tuple(float(s) for s in std), dtype=dtype, **overrides)


__all__ = ["MODELS", "aux_bn", "create_model", "layers"]
