"""Fully convolutional segmentation heads: torchvision's FCN head and Long et al.'s FCN-8s.

A segmentation model is a backbone plus a dense head (`network.Network`); the
head reads the backbone's stage outputs (`Features.stages`, finest first) and
returns per-pixel logits at the input resolution, [batch, height, width,
classes], which `advjax.tasks.Segmentation` scores against [batch, height,
width] label maps.

Bilinear upsampling (`resize_bilinear`). Every head ends by resizing its
coarse scores to the input size with PyTorch's `F.interpolate(mode='bilinear',
align_corners=False)`: per axis, output pixel p of n_out reads the input at

    u = (p + 1/2) n_in / n_out - 1/2,   clamped to [0, n_in - 1],
    y[p] = (1 - t) x[floor u] + t x[floor u + 1],   t = u - floor u,

(pixel centres aligned, the edge pixel repeated beyond the border), which is
`jax.image.resize(method='linear', antialias=False)`.

'fcn' (`FCNHead`): torchvision's FCN-ResNet head on the last stage,

    scores = conv1x1_bias(dropout_0.1(act(norm(conv3x3(x, C -> C / 4)))))

then bilinear upsampling to the input. On a dilated ResNet (output stride 8,
`resnet50_dilated`) this is torchvision's `fcn_resnet50`. The norm and
activation are the model's, so AdvProp's auxiliary BatchNorm
('aux_batchnorm:<set>') reaches the head too. 'fcn_aux' adds torchvision's
auxiliary classifier, the same block on the second-to-last stage; its
upsampled logits are not returned but sown into the 'intermediates'
collection as 'aux_logits' (apply with `mutable=['intermediates']` to read
them; torchvision trains on loss(out) + 0.5 loss(aux)). Its variables exist
either way, so torchvision checkpoints with `aux_classifier.*` load.

'fcn8s' (`FCN8sHead`): the skip architecture of Long, Shelhamer & Darrell
(2015), "Fully Convolutional Networks for Semantic Segmentation", sec. 4.2,
on the last three stages s3, s4, s5 of any backbone whose stages halve the
resolution (pool3, pool4, pool5 of VGG-16; stride 8, 16, 32):

    h      = fc7(fc6(s5))                 optional: 'fcn8s_fc' (see below)
    f5     = score_fr(h)                  1x1 conv to classes
    f4     = align(up2(f5), s4) + score_pool4(s4)
    f3     = align(up2(f4), s3) + score_pool3(s3)
    logits = resize_bilinear(f3, input size)

* up2 (`Upsample2x`) is a learned 2x transposed convolution (4x4 kernel,
  stride 2, no bias) initialised to bilinear interpolation (sec. 3.3): the
  kernel of factor f has size k = 2f - f mod 2 and taps
  g[a] = 1 - |a - c| / f, c = (k - 1) / 2, i.e. (1/4, 3/4, 3/4, 1/4) for
  f = 2, on the class-to-class diagonal. The input is edge-padded by one
  pixel before the transposed convolution and the result cropped to 2h x 2w,
  so at initialisation up2 equals `resize_bilinear` to twice the size
  exactly, borders included (Long et al. crop a zero-padded output instead).
* align (`match_size`): the 2x-upsampled map is aligned with the skip at the
  top-left corner (coarse pixel m covers fine pixels 2m and 2m + 1). A skip
  one row (column) longer, an odd map pooled with floor, gets the last
  upsampled row repeated; one row shorter, an odd map pooled with ceil or
  strided by a padded convolution, loses the last row. Larger mismatches (a
  dilated backbone, whose last stages keep their size) are a ConfigError.
* The score layers are zero-initialised (sec. 4.2 and 4.3: the skip scores
  so that the network starts as the coarser one, the class scoring layer
  because random initialisation did not help).
* The last 8x upsampling is fixed bilinear interpolation to the input size
  (Long et al.'s fixed stride-8 deconvolution, without its border effects and
  for any input size), as in torchvision's FCN.
* fc6/fc7: VGG-16's fully connected layers as convolutions, each followed by
  the activation and dropout 0.5, in the head before score_fr. 'fcn8s_fc' has
  Long et al.'s fc6 (7x7, 4096, padded to keep the size) and fc7 (1x1, 4096);
  'fcn8s' has none, so FCN-8s on a small backbone (`convnet_tiny`) stays small.
  Other widths are one registration: `register_head('fcn8s_fc256',
  fcn8s_factory(fc_widths=(256, 256)))`.

Head variables are top-level names with the head's prefix ('fcn_...',
'fcn8s_...'), which no backbone uses; `owns` tells them from the backbone's,
so a classification run's backbone loads under a segmentation head
(`Experiment.init_backbone`) and `freeze_backbone` trains the head alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.errors import ConfigError
from advjax.models import activations, layers, norms
from advjax.models.network import Features

# torchvision's FCNHead: inner width in_channels // 4, dropout 0.1.
FCN_REDUCTION = 4
FCN_DROPOUT = 0.1
# Long et al.'s fc6 (7x7 on pool5) and fc7 (1x1), 4096 wide, dropout 0.5.
FCN8S_FC_WIDTHS = (4096, 4096)
FCN8S_FC_KERNEL = 7
FCN8S_FC_DROPOUT = 0.5


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of the spatial axes, PyTorch's `F.interpolate(..., align_corners=False)`.

  Args:
    x: [batch, height, width, channels].
    size: (out_height, out_width).

  Returns:
    [batch, out_height, out_width, channels] in x's dtype.
  """
  shape = (x.shape[0], int(size[0]), int(size[1]), x.shape[-1])
  if shape == x.shape:
    return x
  # No antialiasing: PyTorch's bilinear mode samples, it does not low-pass filter when shrinking.
  return jax.image.resize(x, shape, method="linear", antialias=False)


def bilinear_filter(factor: int) -> np.ndarray:
  """The 1-D taps of bilinear upsampling by `factor` as a transposed convolution (Long et al., sec. 3.3).

  Args:
    factor: integer upsampling factor f >= 1.

  Returns:
    [2f - f mod 2] float32 taps g[a] = 1 - |a - c| / f, c = (k - 1) / 2.
  """
  size = 2 * factor - factor % 2
  centre = (size - 1) / 2
  return (1 - np.abs(np.arange(size) - centre) / factor).astype(np.float32)


def bilinear_kernel_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """Initialiser of a [k, k, in, out] transposed-convolution kernel to bilinear upsampling.

  Channel i maps to output channel i with the outer product of
  `bilinear_filter` taps; every other channel pair starts at zero.
  """
  del key
  k, _, cin, cout = shape
  taps = bilinear_filter((k + 1) // 2)
  if taps.shape[0] != k:
    raise ConfigError(f"bilinear kernel: size {k} is no bilinear filter size (2f - f mod 2)")
  kernel = np.zeros(shape, np.float32)
  for c in range(min(cin, cout)):
    kernel[:, :, c, c] = np.outer(taps, taps)
  return jnp.asarray(kernel, dtype)


def _repeat_edge(x: jax.Array, axis: int, before: int, after: int) -> jax.Array:
  """Pads one axis by repeating its first/last slice.

  Unlike jnp.pad(mode='edge'), which slices every axis, only `axis` is
  touched, so a batch sharded with explicit mesh axes stays valid.
  """
  n = x.shape[axis]
  parts = [jax.lax.slice_in_dim(x, 0, 1, axis=axis)] * before + [x]
  parts += [jax.lax.slice_in_dim(x, n - 1, n, axis=axis)] * after
  return jnp.concatenate(parts, axis=axis) if len(parts) > 1 else x


class Upsample2x(nn.Module):
  """Learned 2x upsampling: a 4x4 stride-2 transposed convolution, initialised bilinear.

  With x edge-padded by one pixel (x~), per axis

      y[q] = sum_j x~[j] w[q + 3 - 2j],   q = 0 .. 2n - 1,

  (PyTorch's `ConvTranspose2d(k=4, stride=2, padding=3)` on x~), so with the
  bilinear taps (1/4, 3/4, 3/4, 1/4) y[2m] = 3/4 x[m] + 1/4 x[m - 1] and
  y[2m + 1] = 3/4 x[m] + 1/4 x[m + 1], indices clamped: bilinear
  interpolation to twice the size (align_corners=False).

  Attributes:
    features: output channels.
    dtype: compute dtype; the kernel is stored in float32.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, h, w, C] -> [batch, 2h, 2w, features]."""
    kernel = self.param("kernel", bilinear_kernel_init, (4, 4, x.shape[-1], self.features), jnp.float32)
    h, w = x.shape[1:3]
    padded = _repeat_edge(_repeat_edge(x.astype(self.dtype), 1, 1, 1), 2, 1, 1)
    # lax.conv_transpose convolves the stride-dilated input with the kernel as given, i.e. it
    # flips the taps relative to PyTorch's definition above; flip them back.
    y = jax.lax.conv_transpose(padded, kernel[::-1, ::-1].astype(self.dtype), (2, 2), "VALID",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, 3:3 + 2 * h, 3:3 + 2 * w]


def match_size(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Aligns an upsampled map with a skip at the top-left corner (see the module docstring).

  Args:
    x: [batch, h, w, C], h and w within one pixel of `size`.
    size: the skip's (height, width).

  Returns:
    [batch, size[0], size[1], C]: cropped at the bottom/right, or with the last
    row/column repeated.

  Raises:
    ConfigError: if a side differs by more than one pixel.
  """
  for axis, target in zip((1, 2), size):
    n = x.shape[axis]
    if abs(n - target) > 1:
      raise ConfigError(f"fcn8s: an upsampled map of side {n} does not fit the skip's {target}; the "
                        "backbone's last three stages must each halve the resolution (not a dilated one)")
    if n > target:
      x = jax.lax.slice_in_dim(x, 0, target, axis=axis)
    elif n < target:
      x = _repeat_edge(x, axis, 0, target - n)
  return x


class _Activation(nn.Module):
  """The model's activation under a fixed name, so a learnable one's parameters carry the head's prefix."""

  activation: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return activations.get_activation(self.activation)(x)


def _fcn_block(x: jax.Array, *, prefix: str, num_classes: int, activation: str, norm: str, dtype: Any,
               dropout: float, reduction: int, train: bool, use_batch_stats: bool) -> jax.Array:
  """torchvision's FCNHead, with submodules named prefix + conv/bn/act/dropout/score; in the caller's scope."""
  inner = x.shape[-1] // reduction
  if inner < 1:
    raise ConfigError(f"fcn head: {x.shape[-1]} input channels leave no inner width after // {reduction}")
  y = layers.conv(inner, 3, dtype=dtype, name=f"{prefix}conv")(x)
  y = norms.make_norm(norm, use_running_average=not use_batch_stats, dtype=dtype, name=f"{prefix}bn")(y)
  y = _Activation(activation, name=f"{prefix}act")(y)
  y = nn.Dropout(dropout, deterministic=not train, name=f"{prefix}dropout")(y)
  return layers.conv(num_classes, 1, use_bias=True, dtype=dtype, name=f"{prefix}score")(y)


class FCNHead(nn.Module):
  """torchvision's FCN head on the last stage, upsampled to the input (see the module docstring).

  Variables: fcn_conv, fcn_bn, fcn_score (torchvision's classifier.0/1/4) and,
  with `aux`, fcn_aux_conv, fcn_aux_bn, fcn_aux_score (aux_classifier.0/1/4).

  Attributes:
    num_classes: number of logits per pixel.
    activation: `activations.ACTIVATIONS` name (the model's).
    norm: `norms.NORMS` name (the model's).
    dtype: compute dtype name.
    dropout: dropout rate before the scoring convolution.
    reduction: the inner width is in_channels // reduction.
    aux: also build the auxiliary classifier on the second-to-last stage.
  """

  num_classes: int
  activation: str = "relu"
  norm: str = "batchnorm"
  dtype: str = "float32"
  dropout: float = FCN_DROPOUT
  reduction: int = FCN_REDUCTION
  aux: bool = False

  needs_pooled = False
  prefix = "fcn_"

  @nn.compact
  def __call__(self, features: Features, train: bool, use_batch_stats: bool,
               image_shape: Sequence[int]) -> jax.Array:
    """features.stages[-1] [batch, h, w, C] -> [batch, height, width, num_classes] logits.

    Args:
      features: the backbone's features (`stages` only).
      train: enables dropout (needs the 'dropout' rng).
      use_batch_stats: BatchNorm uses (and updates) batch statistics.
      image_shape: (height, width) of the input, the output's size.

    Returns:
      [batch, height, width, num_classes] logits in the compute dtype.
    """
    if self.aux and len(features.stages) < 2:
      raise ConfigError("fcn head with aux: the backbone has fewer than two stages")
    block = functools.partial(_fcn_block, num_classes=self.num_classes, activation=self.activation,
                              norm=self.norm, dtype=layers.compute_dtype(self.dtype), dropout=self.dropout,
                              reduction=self.reduction, train=train, use_batch_stats=use_batch_stats)
    size = tuple(image_shape[:2])
    if self.aux:
      aux = block(features.stages[-2], prefix=self.prefix + "aux_")
      self.sow("intermediates", "aux_logits", resize_bilinear(aux.astype(jnp.float32), size))
    scores = block(features.stages[-1], prefix=self.prefix)
    return resize_bilinear(scores.astype(jnp.float32), size)

  def owns(self, key: str) -> bool:
    """Whether a top-level variable name belongs to this head."""
    return key.startswith(self.prefix)


class FCN8sHead(nn.Module):
  """Long et al.'s FCN-8s on the last three stages (see the module docstring).

  Variables (Caffe's names): fcn8s_fc6, fcn8s_fc7 (with `fc_widths`),
  fcn8s_score_fr, fcn8s_upscore2, fcn8s_score_pool4, fcn8s_upscore_pool4,
  fcn8s_score_pool3.

  Attributes:
    num_classes: number of logits per pixel.
    activation: `activations.ACTIVATIONS` name, after fc6/fc7.
    dtype: compute dtype name.
    fc_widths: widths of the convolutionalised fully connected layers before
      score_fr (fc6, fc7, ...); () for none.
    fc_kernel: kernel size of the first of them (7 in VGG-16); the others are 1x1.
    fc_dropout: dropout rate after each of them.
  """

  num_classes: int
  activation: str = "relu"
  dtype: str = "float32"
  fc_widths: Sequence[int] = ()
  fc_kernel: int = FCN8S_FC_KERNEL
  fc_dropout: float = FCN8S_FC_DROPOUT

  needs_pooled = False
  prefix = "fcn8s_"

  @nn.compact
  def __call__(self, features: Features, train: bool, use_batch_stats: bool,
               image_shape: Sequence[int]) -> jax.Array:
    """stages s3, s4, s5 [batch, h_s, w_s, C_s] -> [batch, height, width, num_classes] logits.

    Args:
      features: the backbone's features (`stages` only, at least three).
      train: enables dropout after fc6/fc7 (needs the 'dropout' rng).
      use_batch_stats: unused (the head has no normalisation).
      image_shape: (height, width) of the input, the output's size.

    Returns:
      [batch, height, width, num_classes] logits in float32.
    """
    del use_batch_stats
    if len(features.stages) < 3:
      raise ConfigError(f"fcn8s head: needs a backbone with at least 3 stages, got {len(features.stages)}")
    dtype = layers.compute_dtype(self.dtype)
    p = self.prefix
    s3, s4, s5 = features.stages[-3:]
    h = s5
    for i, width in enumerate(self.fc_widths):
      kernel = self.fc_kernel if i == 0 else 1
      h = layers.conv(width, kernel, use_bias=True, dtype=dtype, name=f"{p}fc{6 + i}")(h)
      h = _Activation(self.activation, name=f"{p}act{6 + i}")(h)
      h = nn.Dropout(self.fc_dropout, deterministic=not train, name=f"{p}drop{6 + i}")(h)
    score = functools.partial(layers.conv, self.num_classes, 1, use_bias=True, dtype=dtype,
                              kernel_init=nn.initializers.zeros)
    f = score(name=f"{p}score_fr")(h)
    f = match_size(Upsample2x(self.num_classes, dtype, name=f"{p}upscore2")(f), s4.shape[1:3])
    f = f + score(name=f"{p}score_pool4")(s4)
    f = match_size(Upsample2x(self.num_classes, dtype, name=f"{p}upscore_pool4")(f), s3.shape[1:3])
    f = f + score(name=f"{p}score_pool3")(s3)
    return resize_bilinear(f.astype(jnp.float32), tuple(image_shape[:2]))

  def owns(self, key: str) -> bool:
    """Whether a top-level variable name belongs to this head."""
    return key.startswith(self.prefix)


HeadFactory = Callable[..., nn.Module]


def fcn_factory(*, aux: bool = False, dropout: float = FCN_DROPOUT) -> HeadFactory:
  """A `register_head` factory of `FCNHead`.

  Args:
    aux: build torchvision's auxiliary classifier on the second-to-last stage.
    dropout: dropout rate before the scoring convolution.

  Returns:
    factory(num_classes=, activation=, norm=, dtype=, spec=) -> FCNHead.
  """
  def factory(*, num_classes: int, activation: str, norm: str, dtype: str, spec: Any) -> nn.Module:
    del spec
    return FCNHead(num_classes=num_classes, activation=activation, norm=norm, dtype=dtype, dropout=dropout,
                   aux=aux)
  return factory


def fcn8s_factory(*, fc_widths: Sequence[int] = (), fc_kernel: int = FCN8S_FC_KERNEL,
                  fc_dropout: float = FCN8S_FC_DROPOUT) -> HeadFactory:
  """A `register_head` factory of `FCN8sHead`.

  Args:
    fc_widths: widths of fc6, fc7, ... before score_fr; () for none,
      `FCN8S_FC_WIDTHS` for Long et al.'s VGG-16 FCN-8s.
    fc_kernel: kernel size of fc6.
    fc_dropout: dropout rate after each fc layer.

  Returns:
    factory(num_classes=, activation=, norm=, dtype=, spec=) -> FCN8sHead
    (the norm is not used: FCN-8s' head has no normalisation).
  """
  if any(w < 1 for w in fc_widths) or fc_kernel < 1 or fc_kernel % 2 == 0:
    raise ConfigError(f"fcn8s head: fc_widths {tuple(fc_widths)} must be positive and fc_kernel {fc_kernel} odd")

  def factory(*widths: str, num_classes: int, activation: str, norm: str, dtype: str, spec: Any) -> nn.Module:
    """`widths` (from a name like 'fcn8s_fc:256,256') replace the fc widths."""
    del norm, spec
    chosen = tuple(int(w) for w in widths) if widths else tuple(fc_widths)
    if any(w < 1 for w in chosen):
      raise ValueError(f"fc widths {chosen} must be positive")
    return FCN8sHead(num_classes=num_classes, activation=activation, dtype=dtype, fc_widths=chosen,
                     fc_kernel=fc_kernel, fc_dropout=fc_dropout)
  return factory
