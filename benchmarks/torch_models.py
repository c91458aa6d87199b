"""PyTorch reference implementations of the advjax models.

Each class mirrors a model family of `advjax.models` layer for layer, so that
the same weights (moved with `advjax.bridge`) give the same logits in both
frameworks. They serve two purposes: an independent cross-check of the Flax
code (tests/test_bridge.py) and the PyTorch side of the speed benchmarks.

Conventions shared with the Flax models:
* forward takes NCHW images in [0, 1] and normalises `(x - mean) / std`
  first, so both sides see the same pixel-space inputs;
* BatchNorm2d with PyTorch's defaults (momentum 0.1, eps 1e-5);
* every k x k convolution pads k // 2 on each side.

State-dict names follow widely used public code, so published checkpoints
load directly: torchvision for `ResNet` (CIFAR ResNet-20 reuses its names)
and for the segmentation model `FCN` (fcn_resnet50/101: `backbone.*`,
`classifier.*`, `aux_classifier.*`), Rice et al.'s robust-overfitting code
for `PreActResNet`, and the TRADES/RobustBench `WideResNet` for the wide
ResNets. The mean/std buffers are
not persistent: they are constructor arguments, not learned state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


class _Normalize(nn.Module):
  """(x - mean) / std with per-channel statistics on NCHW input."""

  def __init__(self, mean: Sequence[float], std: Sequence[float]):
    super().__init__()
    self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return (x - self.mean) / self.std


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _add_convnet_layers(module: nn.Module, in_channels: int, widths: Sequence[int]) -> int:
  """Adds the convnet's conv1/bn1 .. convN/bnN to `module`; returns the last width."""
  cin = in_channels
  for i, width in enumerate(widths):
    setattr(module, f"conv{i + 1}", _conv(cin, width, 3, bias=True))
    setattr(module, f"bn{i + 1}", nn.BatchNorm2d(width))
    cin = width
  return cin


class ConvNet(nn.Module):
  """C-C-MP-D x3, L(hidden)-D, L(classes); see advjax/models/convnet.py."""

  def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
               widths: Sequence[int] = (32, 32, 64, 64, 128, 128), hidden: int = 512,
               conv_dropout: float = 0.2, head_dropout: float = 0.5,
               activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    self.num_convs = len(widths)
    cin = _add_convnet_layers(self, in_channels, widths)
    self.act = ACTIVATIONS[activation]()
    self.pool = nn.MaxPool2d(2)
    self.conv_dropout = nn.Dropout(conv_dropout)
    self.head_dropout = nn.Dropout(head_dropout)
    side = image_size
    for _ in range(len(widths) // 2):
      side //= 2
    self.fc1 = nn.Linear(cin * side * side, hidden)
    self.fc2 = nn.Linear(hidden, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.normalize(x)
    for i in range(self.num_convs):
      x = self.act(getattr(self, f"bn{i + 1}")(getattr(self, f"conv{i + 1}")(x)))
      if i % 2 == 1:
        x = self.conv_dropout(self.pool(x))
    x = self.head_dropout(self.act(self.fc1(torch.flatten(x, 1))))
    return self.fc2(x)


class BasicBlock(nn.Module):
  """conv3x3-bn-act-conv3x3-bn, + shortcut, act."""

  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, activation: str,
               width_multiplier: int = 1):
    super().__init__()
    del width_multiplier  # Only bottlenecks have an inner width.
    self.conv1 = _conv(cin, planes, 3, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3)
    self.bn2 = nn.BatchNorm2d(planes)
    self.act = ACTIVATIONS[activation]()
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(_conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
    return self.act(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: 1x1, 3x3 (strided), 1x1 (x4)."""

  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, activation: str,
               width_multiplier: int = 1):
    super().__init__()
    width = planes * width_multiplier
    cout = planes * self.expansion
    self.conv1 = _conv(cin, width, 1)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv(width, width, 3, stride)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = _conv(width, cout, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.act = ACTIVATIONS[activation]()
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.act(self.bn1(self.conv1(x)))
    y = self.act(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.act(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """Post-activation ResNet; `stem='cifar'` (3x3) or 'imagenet' (7x7/2 + pool)."""

  def __init__(self, block: str = "basic", stage_sizes: Sequence[int] = (3, 3, 3),
               widths: Sequence[int] = (64, 128, 256), stem: str = "cifar",
               num_classes: int = 10, in_channels: int = 3, width_multiplier: int = 1,
               activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
    self.normalize = _Normalize(mean, std)
    imagenet = stem == "imagenet"
    self.conv1 = _conv(in_channels, widths[0], 7 if imagenet else 3, 2 if imagenet else 1)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.act = ACTIVATIONS[activation]()
    self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
    cin = widths[0]
    for s, (num_blocks, planes) in enumerate(zip(stage_sizes, widths)):
      blocks = []
      for b in range(num_blocks):
        blocks.append(block_cls(cin, planes, 2 if s > 0 and b == 0 else 1, activation,
                                width_multiplier))
        cin = planes * block_cls.expansion
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.act(self.bn1(self.conv1(self.normalize(x)))))
    for s in range(self.num_stages):
      x = getattr(self, f"layer{s + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))


class DilatedBottleneck(Bottleneck):
  """`Bottleneck` whose 3x3 convolution is dilated (padding = dilation), as torchvision's."""

  def __init__(self, cin: int, planes: int, stride: int, activation: str, dilation: int = 1,
               width_multiplier: int = 1):
    super().__init__(cin, planes, stride, activation, width_multiplier)
    width = planes * width_multiplier
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class ResNetBackbone(nn.Module):
  """torchvision's ImageNet ResNet without avgpool/fc, returning the last two stages.

  `replace_stride_with_dilation` follows torchvision's `_make_layer`: a stage
  marked True keeps stride 1 and multiplies the running dilation by 2; its
  first block uses the dilation before the stage, the later blocks the new one.
  """

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (64, 128, 256, 512),
               in_channels: int = 3, replace_stride_with_dilation: Sequence[bool] = (False, True, True),
               activation: str = "relu"):
    super().__init__()
    self.conv1 = _conv(in_channels, widths[0], 7, 2)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.act = ACTIVATIONS[activation]()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin, dilation = widths[0], 1
    for s, (num_blocks, planes) in enumerate(zip(stage_sizes, widths)):
      stride = 1 if s == 0 else 2
      previous = dilation
      if s > 0 and replace_stride_with_dilation[s - 1]:
        dilation *= stride
        stride = 1
      blocks = []
      for b in range(num_blocks):
        blocks.append(DilatedBottleneck(cin, planes, stride if b == 0 else 1, activation,
                                        dilation=previous if b == 0 else dilation))
        cin = planes * Bottleneck.expansion
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = self.maxpool(self.act(self.bn1(self.conv1(x))))
    outputs = []
    for s in range(self.num_stages):
      x = getattr(self, f"layer{s + 1}")(x)
      outputs.append(x)
    return outputs[-2], outputs[-1]


class FCNHead(nn.Sequential):
  """torchvision's FCNHead: conv3x3 (C -> C/4, no bias), BN, act, dropout 0.1, conv1x1 (bias)."""

  def __init__(self, cin: int, num_classes: int, activation: str = "relu", dropout: float = 0.1):
    inner = cin // 4
    super().__init__(nn.Conv2d(cin, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner),
                     ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Conv2d(inner, num_classes, 1))


class FCN(nn.Module):
  """torchvision's FCN-ResNet: dilated ResNet backbone, FCNHead, bilinear upsampling.

  forward returns {'out': logits} and, with `aux`, 'aux': the auxiliary
  classifier's logits on the second-to-last stage, both [batch, classes, H, W]
  at the input size (F.interpolate, bilinear, align_corners=False).
  """

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3), widths: Sequence[int] = (64, 128, 256, 512),
               num_classes: int = 21, in_channels: int = 3, aux: bool = True,
               replace_stride_with_dilation: Sequence[bool] = (False, True, True),
               activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    self.backbone = ResNetBackbone(stage_sizes, widths, in_channels, replace_stride_with_dilation, activation)
    out = widths[-1] * Bottleneck.expansion
    self.classifier = FCNHead(out, num_classes, activation)
    self.aux_classifier = FCNHead(widths[-2] * Bottleneck.expansion, num_classes, activation) if aux else None

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    size = x.shape[-2:]
    penultimate, last = self.backbone(self.normalize(x))
    result = {"out": _upsample(self.classifier(last), size)}
    if self.aux_classifier is not None:
      result["aux"] = _upsample(self.aux_classifier(penultimate), size)
    return result


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
  return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Upsample2x(nn.ConvTranspose2d):
  """advjax's `fcn.Upsample2x`: a 4x4 stride-2 transposed convolution (no bias) on the edge-padded input.

  Per axis y[q] = sum_j x~[j] w[q + 3 - 2j], x~ the input with its edge
  repeated once on each side: PyTorch's ConvTranspose2d(k=4, stride=2,
  padding=3) on x~, which gives exactly twice the input size. The weight is
  [in, out, 4, 4], the Flax kernel [4, 4, in, out] transposed (2, 3, 0, 1).
  """

  def __init__(self, channels: int):
    super().__init__(channels, channels, 4, stride=2, padding=3, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"))


def _match_size(x: torch.Tensor, size) -> torch.Tensor:
  """advjax's `fcn.match_size`: crop at the bottom/right, or repeat the last row/column."""
  x = x[:, :, :size[0], :size[1]]
  pad_h, pad_w = size[0] - x.shape[2], size[1] - x.shape[3]
  return nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


class ConvNetDenseFCN8s(nn.Module):
  """advjax's 'convnet_dense' backbone with the FCN-8s head 'fcn8s_fc:<widths>'; see advjax/models/fcn.py.

  The backbone is `ConvNet`'s six conv-bn-act layers, read before each max
  pool (maps at 1/1, 1/2 and 1/4 of the input, s3, s4, s5), with no fc1. The
  head, in Long et al.'s (Caffe) names with the Flax prefix:

      h = drop(act(fcn8s_fc7(drop(act(fcn8s_fc6(s5))))))    fc6 k x k, fc7 1x1
      f = match(fcn8s_upscore2(fcn8s_score_fr(h)), s4) + fcn8s_score_pool4(s4)
      f = match(fcn8s_upscore_pool4(f), s3) + fcn8s_score_pool3(s3)
      logits = interpolate(f, input size, bilinear, align_corners=False)

  Every parameter's name is its Flax variable's top-level name (conv1..conv6,
  bn1..bn6, fcn8s_fc6, ...), so a Flax-to-PyTorch copy is the convnet
  bridge's re-layout plus the transposed convolutions' (in, out) order (see
  `Upsample2x`). forward: NCHW images in [0, 1] -> [batch, classes, H, W] logits.
  """

  def __init__(self, num_classes: int = 11, in_channels: int = 1,
               widths: Sequence[int] = (32, 32, 64, 64, 128, 128), fc_widths: Sequence[int] = (128, 128),
               fc_kernel: int = 7, fc_dropout: float = 0.5, activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    self.num_convs = len(widths)
    cin = _add_convnet_layers(self, in_channels, widths)
    self.act = ACTIVATIONS[activation]()
    self.pool = nn.MaxPool2d(2)
    self.fc_dropout = nn.Dropout(fc_dropout)
    self.num_fc = len(fc_widths)
    h = cin
    for i, width in enumerate(fc_widths):
      setattr(self, f"fcn8s_fc{6 + i}", _conv(h, width, fc_kernel if i == 0 else 1, bias=True))
      h = width
    self.fcn8s_score_fr = _conv(h, num_classes, 1, bias=True)
    self.fcn8s_upscore2 = Upsample2x(num_classes)
    self.fcn8s_score_pool4 = _conv(widths[3], num_classes, 1, bias=True)
    self.fcn8s_upscore_pool4 = Upsample2x(num_classes)
    self.fcn8s_score_pool3 = _conv(widths[1], num_classes, 1, bias=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-2:]
    x = self.normalize(x)
    stages = []
    for i in range(self.num_convs):
      x = self.act(getattr(self, f"bn{i + 1}")(getattr(self, f"conv{i + 1}")(x)))
      if i % 2 == 1:
        stages.append(x)
        if len(stages) < self.num_convs // 2:
          x = self.pool(x)
    s3, s4, s5 = stages[-3:]
    h = s5
    for i in range(self.num_fc):
      h = self.fc_dropout(self.act(getattr(self, f"fcn8s_fc{6 + i}")(h)))
    f = _match_size(self.fcn8s_upscore2(self.fcn8s_score_fr(h)), s4.shape[-2:]) + self.fcn8s_score_pool4(s4)
    f = _match_size(self.fcn8s_upscore_pool4(f), s3.shape[-2:]) + self.fcn8s_score_pool3(s3)
    return f if tuple(f.shape[-2:]) == tuple(size) else _upsample(f, size)


class PreActBlock(nn.Module):
  """bn-act-conv3x3-bn-act-(dropout)-conv3x3 + shortcut of the activated input.

  `shortcut_name` only renames the projection: 'shortcut' (a 1-element
  Sequential, Rice et al.) or 'convShortcut' (TRADES wide ResNet).
  """

  def __init__(self, cin: int, planes: int, stride: int, activation: str,
               dropout: float = 0.0, shortcut_name: str = "shortcut"):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = _conv(cin, planes, 3, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3)
    self.act = ACTIVATIONS[activation]()
    self.dropout = nn.Dropout(dropout)
    self.shortcut_name = shortcut_name
    self.has_projection = stride != 1 or cin != planes
    if self.has_projection:
      projection = _conv(cin, planes, 1, stride)
      if shortcut_name == "shortcut":
        projection = nn.Sequential(projection)
      setattr(self, shortcut_name, projection)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.act(self.bn1(x))
    shortcut = getattr(self, self.shortcut_name)(out) if self.has_projection else x
    y = self.conv1(out)
    y = self.conv2(self.dropout(self.act(self.bn2(y))))
    return y + shortcut


class _WideStage(nn.Module):
  """TRADES' `NetworkBlock`: the blocks of a stage under `.layer`."""

  def __init__(self, blocks: Sequence[nn.Module]):
    super().__init__()
    self.layer = nn.Sequential(*blocks)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer(x)


class PreActResNet(nn.Module):
  """Pre-activation ResNet, CIFAR stem; names of Rice et al. (2020)."""

  def __init__(self, stage_sizes: Sequence[int] = (2, 2, 2, 2),
               widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 10,
               in_channels: int = 3, activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    self.conv1 = _conv(in_channels, widths[0], 3)
    cin = widths[0]
    for s, (num_blocks, planes) in enumerate(zip(stage_sizes, widths)):
      blocks = []
      for b in range(num_blocks):
        blocks.append(PreActBlock(cin, planes, 2 if s > 0 and b == 0 else 1, activation))
        cin = planes
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.bn = nn.BatchNorm2d(cin)
    self.act = ACTIVATIONS[activation]()
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv1(self.normalize(x))
    for s in range(self.num_stages):
      x = getattr(self, f"layer{s + 1}")(x)
    return self.linear(self.act(self.bn(x)).mean(dim=(2, 3)))


class WideResNet(nn.Module):
  """Wide ResNet with "wide_basic" blocks; names of the TRADES/RobustBench code."""

  def __init__(self, stage_sizes: Sequence[int] = (4, 4, 4),
               widths: Sequence[int] = (160, 320, 640), stem_width: int = 16,
               num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
               activation: str = "relu", mean=(0.5,), std=(0.5,)):
    super().__init__()
    self.normalize = _Normalize(mean, std)
    self.conv1 = _conv(in_channels, stem_width, 3)
    cin = stem_width
    for s, (num_blocks, planes) in enumerate(zip(stage_sizes, widths)):
      blocks = []
      for b in range(num_blocks):
        blocks.append(PreActBlock(cin, planes, 2 if s > 0 and b == 0 else 1, activation,
                                  dropout, shortcut_name="convShortcut"))
        cin = planes
      setattr(self, f"block{s + 1}", _WideStage(blocks))
    self.num_stages = len(stage_sizes)
    self.bn1 = nn.BatchNorm2d(cin)
    self.act = ACTIVATIONS[activation]()
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv1(self.normalize(x))
    for s in range(self.num_stages):
      x = getattr(self, f"block{s + 1}")(x)
    return self.fc(self.act(self.bn1(x)).mean(dim=(2, 3)))


# Same presets as advjax.models.MODELS, for the names the bridge supports.
PRESETS = {
    "convnet": dict(cls=ConvNet),
    "convnet_tiny": dict(cls=ConvNet, widths=(8, 8, 16, 16, 16, 16), hidden=32),
    "resnet20": dict(cls=ResNet, stage_sizes=(3, 3, 3), widths=(64, 128, 256)),
    "resnet20_tiny": dict(cls=ResNet, stage_sizes=(1, 1, 1), widths=(8, 16, 32)),
    "preact_resnet18": dict(cls=PreActResNet),
    "preact_resnet18_tiny": dict(cls=PreActResNet, stage_sizes=(1, 1, 1, 1),
                                 widths=(8, 16, 32, 64)),
    "wrn28_10": dict(cls=WideResNet),
    "wrn32_10": dict(cls=WideResNet, stage_sizes=(5, 5, 5)),
    "wrn16_2": dict(cls=WideResNet, stage_sizes=(2, 2, 2), widths=(32, 64, 128)),
    "wrn_tiny": dict(cls=WideResNet, stage_sizes=(1, 1, 1), widths=(8, 16, 32), stem_width=4),
    "resnet50": dict(cls=ResNet, block="bottleneck", stem="imagenet",
                     stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet101": dict(cls=ResNet, block="bottleneck", stem="imagenet",
                      stage_sizes=(3, 4, 23, 3), widths=(64, 128, 256, 512)),
    "resnet152": dict(cls=ResNet, block="bottleneck", stem="imagenet",
                      stage_sizes=(3, 8, 36, 3), widths=(64, 128, 256, 512)),
    "wide_resnet50_2": dict(cls=ResNet, block="bottleneck", stem="imagenet",
                            stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                            width_multiplier=2),
    "resnet50_tiny": dict(cls=ResNet, block="bottleneck", stem="imagenet",
                          stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
    # Segmentation: advjax's resnet{50,101}_dilated(_tiny) with the 'fcn_aux' head ('fcn': aux=False).
    "fcn_resnet50": dict(cls=FCN, stage_sizes=(3, 4, 6, 3)),
    "fcn_resnet101": dict(cls=FCN, stage_sizes=(3, 4, 23, 3)),
    "fcn_resnet50_tiny": dict(cls=FCN, stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
}


def create_torch_model(name: str, **kwargs) -> nn.Module:
  """Builds the PyTorch twin of `advjax.models.create_model(name, ...)`.

  Args:
    name: a key of `PRESETS`.
    **kwargs: constructor arguments (num_classes, in_channels, activation,
      mean, std, and `image_size` for the convnet).

  Returns:
    The torch module, in training mode as PyTorch constructs it.
  """
  preset = dict(PRESETS[name])
  cls = preset.pop("cls")
  return cls(**preset, **kwargs)
