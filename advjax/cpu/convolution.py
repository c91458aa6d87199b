"""2-D convolution whose input gradient is itself a forward convolution.

Attacks differentiate the loss with respect to the *input*, every step, and
run those steps inside `lax.fori_loop`. JAX differentiates a convolution

    y[n, o, c] = sum_{k, i} x_pad[n, o s + k d, i] w[k, i, c]

(per spatial axis: stride s, kernel dilation d, padding (lo, hi)) by
transposing it: the input gradient is the convolution of the stride-dilated
cotangent with the kernel read flipped and with in/out swapped, which JAX
expresses through dimension numbers (kernel layout `01oi`) instead of moving
any data. XLA:CPU's fast convolution paths (YNNPACK, Eigen) do not take that
layout once the convolution sits in a rolled loop body (outside loops XLA
rewrites it): ten forward + input-gradient steps of a 3x3 convolution on
[128, 28, 28, 32] in a `fori_loop` took ~30x longer than with the
formulation below, and the whole convnet's 10-step loop ~7x longer.

`conv_general` computes the same forward convolution with `lax.conv_general_dilated`
(NHWC input, HWIO kernel, so its output is bit-identical to `nn.Conv`'s) and
defines its VJP by hand (`jax.custom_vjp`):

  input gradient   dx = conv(g dilated by s, w~), stride 1, kernel dilation d,
                   padding (ke - 1 - lo, n - 1 - (m - 1) s + lo),
  where ke = (k - 1) d + 1 is the dilated kernel extent, n the input size,
  m the output size, and w~[a, b, c, i] = w[k_h - 1 - a, k_w - 1 - b, i, c]
  is the kernel flipped in space and transposed in/out, materialised (it is
  small) in the ordinary HWIO layout. With feature groups G the transpose
  stays within each group: w [kh, kw, I/G, O] -> [kh, kw, O/G, I] with the
  output axis ordered group-major, and the gradient convolution has G groups
  too (depthwise: the same kernel, flipped).

  kernel gradient  JAX's own transpose of the convolution in its kernel
                   argument (the batch is the contracted axis), so it equals
                   autodiff's bit for bit.

Each gradient is traced only when something differentiates with respect to
that argument (`symbolic_zeros`): an attack's program has no kernel
gradients and a training step no input gradient for the image, as with
autodiff, so programs and their convolution counts stay as JAX would build
them.

Depthwise layout. A kernel with one input channel per group ([kh, kw, 1,
out], EfficientNet's depthwise convolutions, and the transposed kernel of a
depthwise convolution) is the same array as [kh, kw, out, 1] and is handed to
XLA in the 'HWOI' layout, forward and backward. Inside a compiled loop
XLA:CPU then keeps its own grouped-convolution kernel instead of the
YNNPACK fusion that an 'HWIO' depthwise convolution gets; on [64, 16, 16, 96]
a 3x3 depthwise forward + input gradient in a `fori_loop` ran ~13x faster
than with autodiff (whose transposed kernel happens to be 'HWOI' already,
which makes autodiff's input gradient the fast half there). Outside loops
XLA lays both out alike and the result is unchanged.

The padding identity: the dilated cotangent has (m - 1) s + 1 entries; with
the low padding ke - 1 - lo a full correlation with the flipped kernel puts
input position 0 at output position 0, and the high padding makes the output
exactly n long, which also covers inputs a strided convolution never read
(their gradient is 0).

`Conv` is a linen module with `nn.Conv`'s fields (the ones advjax uses),
parameter names, shapes, initialisers and dtype promotion, calling
`conv_general`: swapping it for `nn.Conv` keeps the variable tree and the
initial values identical for the same key and name.

Limits. Forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) of a custom
VJP is not supported by JAX; reverse mode, second order by reverse over
reverse (grad of grad), `vmap` and `jit` are. Only 2-D convolutions without
input dilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from advjax.errors import ConfigError

Array = jax.Array
Padding = str | int | Sequence[int | tuple[int, int]]

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


class _Spec(NamedTuple):
  """Static arguments of one convolution (hashable, for custom_vjp)."""

  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  groups: int
  precision: Any


def _lax_conv(x: Array, kernel: Array, strides, padding, lhs_dilation, rhs_dilation, groups: int,
              precision) -> Array:
  """lax.conv_general_dilated on NHWC x HWIO; kernels with one input channel per group pass as HWOI.

  A depthwise kernel [kh, kw, 1, out] is the same array as [kh, kw, out, 1];
  declared with the 'HWOI' layout, XLA:CPU keeps it out of the (single-core,
  slow for depthwise) YNNPACK path inside compiled loops (see module docstring).
  """
  dimension_numbers = DIMENSION_NUMBERS
  if groups > 1 and kernel.shape[2] == 1:
    kernel = kernel.reshape(kernel.shape[:2] + (kernel.shape[3], 1))
    dimension_numbers = ("NHWC", "HWOI", "NHWC")
  return lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=groups, precision=precision)


def _forward(spec: _Spec, x: Array, kernel: Array) -> Array:
  return _lax_conv(x, kernel, spec.strides, spec.padding, None, spec.dilation, spec.groups, spec.precision)


def transposed_kernel(kernel: Array, groups: int = 1) -> Array:
  """The kernel of the input-gradient convolution: flipped in space, in/out swapped per group.

  Args:
    kernel: [kh, kw, in / groups, out] (HWIO).
    groups: feature groups of the forward convolution.

  Returns:
    [kh, kw, out / groups, in] with result[a, b, c, g * (in / groups) + i] =
    kernel[kh - 1 - a, kw - 1 - b, i, g * (out / groups) + c].
  """
  kh, kw, in_g, out = kernel.shape
  k = kernel.reshape(kh, kw, in_g, groups, out // groups)
  k = jnp.transpose(k, (0, 1, 4, 3, 2)).reshape(kh, kw, out // groups, groups * in_g)
  return k[::-1, ::-1]


def _input_gradient_padding(spec: _Spec, in_size: Sequence[int], kernel_size: Sequence[int],
                           out_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Padding of the input-gradient convolution (see the module docstring)."""
  pads = []
  for n, k, m, s, d, (lo, _) in zip(in_size, kernel_size, out_size, spec.strides, spec.dilation, spec.padding):
    extent = (k - 1) * d + 1
    pads.append((extent - 1 - lo, n - 1 - (m - 1) * s + lo))
  return tuple(pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(spec: _Spec, x: Array, kernel: Array) -> Array:
  return _forward(spec, x, kernel)


def _conv_fwd(spec, x, kernel):
  # symbolic_zeros=True: the primals arrive as CustomVJPPrimal, whose
  # `perturbed` says whether a gradient with respect to them is wanted. The
  # answer is static, so it travels in the residuals' structure (a pytree
  # leaf of None) and the backward pass traces only the gradients in use: an
  # attack's program holds no kernel gradients, a training step's first layer
  # no input gradient.
  wants = (x.perturbed, kernel.perturbed)
  # None marks a wanted gradient, () one that is not.
  residuals = (x.value, kernel.value, None if wants[0] else (), None if wants[1] else ())
  return _forward(spec, x.value, kernel.value), residuals


def _conv_bwd(spec, residuals, g):
  x, kernel, dx_wanted, dkernel_wanted = residuals
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return None, None
  dx = dkernel = None
  if dx_wanted is None:
    pads = _input_gradient_padding(spec, x.shape[1:3], kernel.shape[:2], g.shape[1:3])
    dx = _lax_conv(g, transposed_kernel(kernel, spec.groups).astype(g.dtype), (1, 1), pads, spec.strides,
                   spec.dilation, spec.groups, spec.precision).astype(x.dtype)
  if dkernel_wanted is None:
    (dkernel,) = jax.linear_transpose(lambda k: _forward(spec, x, k), kernel)(g)
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def _pair(name: str, value, minimum: int = 1) -> tuple[int, int]:
  value = (value, value) if isinstance(value, int) else tuple(value)
  if len(value) != 2 or any(not isinstance(v, int) or v < minimum for v in value):
    raise ConfigError(f"convolution {name} must be an int or two ints >= {minimum}, got {value}")
  return value


def resolve_padding(padding: Padding, in_size: Sequence[int], kernel_size: Sequence[int],
                    strides: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Explicit ((low, high), (low, high)) padding, as `nn.Conv` reads `padding`.

  Args:
    padding: 'SAME', 'VALID', an int (same on every side), or two entries each
      an int (symmetric) or a (low, high) pair.
    in_size: (height, width) of the input.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    dilation: kernel dilation (dh, dw).

  Returns:
    ((low_h, high_h), (low_w, high_w)).

  Raises:
    ConfigError: for any other form (nn.Conv's 'CIRCULAR', 'REFLECT' and
      'CAUSAL' included).
  """
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ConfigError(f"convolution padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    return tuple(tuple(p) for p in lax.padtype_to_pads(in_size, extent, strides, padding.upper()))
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  pads = []
  for p in padding:
    p = (p, p) if isinstance(p, int) else tuple(p)
    if len(p) != 2:
      raise ConfigError(f"convolution padding entries must be ints or (low, high) pairs, got {padding!r}")
    pads.append((int(p[0]), int(p[1])))
  if len(pads) != 2:
    raise ConfigError(f"convolution padding needs one entry per spatial axis (2), got {padding!r}")
  return tuple(pads)


def conv_general(x: Array, kernel: Array, strides: int | Sequence[int] = 1, padding: Padding = "SAME",
                 dilation: int | Sequence[int] = 1, feature_group_count: int = 1,
                 precision: Any = None) -> Array:
  """`lax.conv_general_dilated` (NHWC, HWIO) with a forward-convolution input gradient.

  Same output as `lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  feature_group_count=feature_group_count)`, bit for bit; its VJP is the one
  of the module docstring.

  Args:
    x: [batch, height, width, in_features].
    kernel: [kh, kw, in_features / feature_group_count, out_features], same
      dtype as x.
    strides: int or (sh, sw).
    padding: 'SAME', 'VALID', an int, or ((low_h, high_h), (low_w, high_w))
      (entries may be single ints).
    dilation: kernel dilation, int or (dh, dw).
    feature_group_count: groups; in_features for a depthwise convolution.
    precision: passed to `lax.conv_general_dilated`.

  Returns:
    [batch, out_h, out_w, out_features], out = (n + low + high - (k - 1) d - 1)
    // s + 1.

  Raises:
    ConfigError: if the shapes, groups, strides or padding do not fit.
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ConfigError(f"conv_general needs x [N, H, W, C] and kernel [kh, kw, in, out], "
                      f"got {x.shape} and {kernel.shape}")
  groups = int(feature_group_count)
  if groups < 1 or x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
    raise ConfigError(f"conv_general: {groups} feature groups do not fit input features {x.shape[-1]}, "
                      f"kernel {kernel.shape}")
  strides = _pair("strides", strides)
  dilation = _pair("dilation", dilation)
  pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  spec = _Spec(strides, pads, dilation, groups, precision)
  return _conv(spec, x, kernel)


class Conv(nn.Module):
  """`flax.linen.Conv` (2-D) computed with `conv_general`.

  Same fields as nn.Conv for the options advjax uses, same parameters
  ('kernel' [kh, kw, in / groups, features] then 'bias' [features], drawn
  in that order from the same initialisers) and same dtype promotion, so
  the variable tree, the initial values and the forward output equal
  nn.Conv's; only the derivative differs in how it is computed.

  Attributes:
    features: output channels.
    kernel_size: int or (kh, kw).
    strides: int or (sh, sw).
    padding: 'SAME', 'VALID', an int, or per-axis ints or (low, high) pairs.
    kernel_dilation: int or (dh, dw).
    feature_group_count: feature groups (input channels for depthwise).
    use_bias: add a per-channel bias.
    dtype: compute dtype (None: inferred from input and parameters).
    param_dtype: dtype of the stored parameters.
    precision: passed to `lax.conv_general_dilated`.
    kernel_init: kernel initialiser (nn.Conv's default).
    bias_init: bias initialiser (zeros).
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """inputs: [*batch, height, width, in_features] -> [*batch, out_h, out_w, features]."""
    kernel_size = _pair("kernel_size", self.kernel_size)
    if inputs.ndim < 3:
      raise ConfigError(f"Conv needs [..., height, width, channels], got shape {inputs.shape}")
    batch_shape = inputs.shape[:-3]
    x = inputs.reshape((-1,) + inputs.shape[-3:]) if len(batch_shape) != 1 else inputs
    in_features = x.shape[-1]
    if in_features % self.feature_group_count:
      raise ConfigError(f"Conv: {in_features} input features are not divisible into "
                        f"{self.feature_group_count} groups")
    kernel_shape = kernel_size + (in_features // self.feature_group_count, self.features)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_general(x, kernel, self.strides, self.padding, self.kernel_dilation,
                     self.feature_group_count, self.precision)
    if bias is not None:
      y += bias.reshape((1, 1, 1, -1))
    if len(batch_shape) != 1:
      y = y.reshape(batch_shape + y.shape[1:])
    return y
