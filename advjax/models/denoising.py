"""Feature denoising blocks (Xie et al., CVPR 2019; Xie thesis, ch. 4, secs. 4.4-4.6).

Adversarial perturbations of an image become noise in a network's feature
maps (thesis fig. 4.3). A *denoising block* (fig. 4.4) inserted after a
stage of a backbone cleans the features x [batch, height, width, channels]
with a *denoising operation* D and lets the network learn how much of the
result to keep:

    y = x + BN(conv1x1(D(x))).

The 1x1 convolution trades removed noise against removed signal, the
residual connection keeps the signal (sec. 4.4.1). The normalisation's scale
starts at zero, so a freshly initialised block is exactly the identity and
inserting it does not disturb the backbone. Table 4.1 ablates the two parts:
`use_conv=False` gives y = x + BN(D(x)), `residual=False` gives
y = BN(conv1x1(D(x))) (the thesis could not train that one).

Denoising operations (sec. 4.4.2), each a pure function below:

* Non-local means (eq. 4.1), a weighted mean over all positions L,

      y_i = (1 / C(x)) sum_{j in L} f(x_i, x_j) x_j,

  averaging x_j itself rather than an embedding of it, so that channel c of
  y is a denoised channel c of x.
  - Gaussian (`nonlocal_gaussian`): f(x_i, x_j) = exp(theta(x_i)^T phi(x_j)
    / sqrt(d)) and C(x) = sum_j f(x_i, x_j), i.e. the weights are a softmax
    over j. theta and phi are 1x1 convolutions to d = C/2 channels (at least
    1), initialised from a normal distribution with std 0.01 and without
    bias (phi's bias would cancel in the softmax; the thesis writes the
    embeddings as plain 1x1 convolutions). The thesis's "d is the number of
    channels" is read as the channels of the embedding, as in scaled
    dot-product attention. Wang et al. (2018) call this form the *embedded*
    Gaussian and their "Gaussian" is exp(x_i^T x_j) without embeddings; the
    thesis's Gaussian *is* the embedded one (and it notes that the embedding
    is essential for this form), so there is no separate embedded variant.
  - Dot product (`nonlocal_dot`): f(x_i, x_j) = x_i^T x_j and C(x) = N, the
    number of positions averaged over; no parameters. Stacking the
    positions into X [N, C], Y = (X X^T) X / N = X (X^T X) / N: the second
    order needs only the [C, C] Gram matrix and is used when C < N; the
    first, the [N, N] affinity, otherwise.

* Bilateral filter (eq. 4.2): the same weights, restricted to the size x size
  neighbourhood Omega(i) of each position (3x3 in the thesis),

      y_i = (1 / C(x)) sum_{j in Omega(i)} f(x_i, x_j) x_j.

  At the borders, neighbours outside the map do not exist: they take no part
  in the sum nor in the normalisation (the softmax runs over the neighbours
  inside the map; the dot-product form divides by their count |Omega(i)|,
  the analogue of N). With a neighbourhood that covers the whole map from
  every position (size >= 2 max(H, W) - 1) the bilateral filter is exactly
  the non-local operation of the same form.

* Mean filter: 3x3 average pooling with stride 1.

* Median filter (eq. 4.3): y_i = median{x_j : j in Omega(i)}, per channel,
  over the 3x3 window.

  Both pad the map by reflection (numpy's 'reflect': d c b | a b c d, the
  border not repeated), so every output is a statistic of real features: zero
  padding would pull border features towards 0, and edge replication would
  count a border pixel up to four times in a corner window, so a single
  outlier there could dominate the mean and survive the median, which
  removes it everywhere else. (A map of width 1 is padded with copies of
  itself.)

* Null (`null`): D(x) = x, the ablation baseline of fig. 4.7, a residual
  block with a single 1x1 convolution.

Placement (sec. 4.6.2). With blocks after every residual block
(`placement='block'`), the non-local operations subsample the keys and
values x_j by 2x2 max pooling with stride 2 (rounding up: odd maps are
padded with -inf) while the queries x_i stay at full resolution; N is then
the number of pooled positions, and the Gaussian's phi embeds the pooled x.
Local operations are not subsampled.

Numerics: the affinities, softmax and Gram matrix are computed in float32
whatever the input dtype; each operation returns its input's dtype, and so
does the block.

The block is registered as 'denoise' in `advjax.models.blocks`: the block
names 'denoise:nonlocal_gaussian', 'denoise:mean,no_conv' or
'denoise:nonlocal_dot,affinity' (a fixed computation order) build it through
`denoising_factory`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.errors import ConfigError, unknown_name
from advjax import registry
from advjax.models import blocks, layers, norms

Array = jax.Array

OPERATIONS = ("nonlocal_gaussian", "nonlocal_dot", "bilateral_gaussian", "bilateral_dot", "mean", "median",
              "null")
DOT_ORDERS = ("auto", "gram", "affinity")
# Ablations of table 4.1, and the dot product's computation order (for timing it).
FLAGS = ("no_conv", "no_residual", "gram", "affinity")
# The neighbourhood of the local filters in the thesis (sec. 4.6.1: "3x3 mean filtering", ...).
NEIGHBOURHOOD = 3
# Embeddings start small so that the softmax starts nearly uniform.
EMBEDDING_STD = 0.01


def _flatten(x: Array) -> Array:
  """[batch, H, W, C] -> [batch, H * W, C] in float32."""
  return x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)


def _check_size(size: int) -> None:
  if size < 1 or size % 2 == 0:
    raise ConfigError(f"neighbourhood size {size} must be a positive odd number")


def subsample_keys(x: Array) -> Array:
  """2x2 max pooling with stride 2, rounding up (sec. 4.6.2's key subsampling).

  Args:
    x: [batch, H, W, C].

  Returns:
    [batch, ceil(H / 2), ceil(W / 2), C]; an odd map's last row or column is
    pooled on its own (padding with -inf), so no position is dropped.
  """
  return layers.max_pool(x, 2, 2, padding="SAME")


# ---------------------------------------------------------- non-local means


def gaussian_weights(queries: Array, keys: Array) -> Array:
  """The Gaussian non-local weights f(x_i, x_j) / C(x) (eq. 4.1), a softmax over j.

  Args:
    queries: theta(x) [batch, H, W, d].
    keys: phi(x) [batch, h, w, d] (h, w = H, W, or the subsampled size).

  Returns:
    [batch, H * W, h * w] float32 weights softmax_j(theta_i^T phi_j / sqrt(d)),
    each row summing to 1 (positions in row-major order).
  """
  d = queries.shape[-1]
  logits = jnp.einsum("bnd,bmd->bnm", _flatten(queries), _flatten(keys)) / math.sqrt(d)
  return jax.nn.softmax(logits, axis=-1)


def nonlocal_gaussian(queries: Array, keys: Array, values: Array) -> Array:
  """Gaussian non-local means: y_i = sum_j softmax_j(theta_i^T phi_j / sqrt(d)) x_j.

  Args:
    queries: theta(x) [batch, H, W, d].
    keys: phi(x_j) [batch, h, w, d].
    values: x_j [batch, h, w, C] (x itself, or its subsampled map).

  Returns:
    [batch, H, W, C] in `values`' dtype.
  """
  weights = gaussian_weights(queries, keys)
  y = jnp.einsum("bnm,bmc->bnc", weights, _flatten(values))
  return y.reshape(*queries.shape[:3], values.shape[-1]).astype(values.dtype)


def dot_order(channels: int, positions: int) -> str:
  """The cheaper order of the dot-product non-local means: 'gram' if C < N, else 'affinity'."""
  return "gram" if channels < positions else "affinity"


def nonlocal_dot(x: Array, keys: Array | None = None, *, order: str = "auto") -> Array:
  """Dot-product non-local means: y_i = (1 / N) sum_j (x_i^T x_j) x_j (eq. 4.1).

  The keys x_j are also the values (no embedding, no parameters).

  Args:
    x: the queries x_i, [batch, H, W, C].
    keys: the x_j [batch, h, w, C]; None for x itself. N = h * w.
    order: 'gram' computes Y = X (K^T K) / N with the [C, C] Gram matrix,
      'affinity' Y = (X K^T) K / N with the [H W, N] affinity; 'auto' picks
      the cheaper, `dot_order(C, N)`. Both give the same result up to
      rounding.

  Returns:
    [batch, H, W, C] in x's dtype.

  Raises:
    ConfigError: unknown order.
  """
  if order not in DOT_ORDERS:
    raise unknown_name("dot-product order", order, DOT_ORDERS)
  xf = _flatten(x)
  kf = xf if keys is None else _flatten(keys)
  n = kf.shape[1]
  if order == "auto":
    order = dot_order(x.shape[-1], n)
  if order == "gram":
    y = jnp.einsum("bnc,bce->bne", xf, jnp.einsum("bmc,bme->bce", kf, kf))
  else:
    y = jnp.einsum("bnm,bmc->bnc", jnp.einsum("bnc,bmc->bnm", xf, kf), kf)
  return (y / n).reshape(x.shape).astype(x.dtype)


# --------------------------------------------------------------- local filters


def _shifts(x: Array, size: int, mode: str) -> list[Array]:
  """The size**2 maps x_j for j in the size x size window around each position.

  Args:
    x: [batch, H, W, C].
    size: odd window size.
    mode: jnp.pad mode for the border ('constant' pads zeros).

  Returns:
    size**2 arrays [batch, H, W, C], window offsets in row-major order.
  """
  r = size // 2
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
  return [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(size) for dx in range(size)]


def _inside(height: int, width: int, size: int) -> np.ndarray:
  """[H, W, size**2] bool: whether each window offset of each position lies inside the map."""
  r = size // 2
  rows = np.arange(height)[:, None] + np.arange(-r, r + 1)[None, :]
  cols = np.arange(width)[:, None] + np.arange(-r, r + 1)[None, :]
  row_ok = (rows >= 0) & (rows < height)
  col_ok = (cols >= 0) & (cols < width)
  return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(height, width, size * size)


def bilateral_gaussian(queries: Array, keys: Array, values: Array, size: int = NEIGHBOURHOOD) -> Array:
  """Gaussian bilateral filter: y_i = sum_{j in Omega(i)} softmax_j(theta_i^T phi_j / sqrt(d)) x_j (eq. 4.2).

  The softmax runs over the neighbours inside the map only.

  Args:
    queries: theta(x) [batch, H, W, d].
    keys: phi(x) [batch, H, W, d].
    values: x [batch, H, W, C].
    size: the neighbourhood Omega(i) is the size x size window (odd).

  Returns:
    [batch, H, W, C] in `values`' dtype.

  Raises:
    ConfigError: size not a positive odd number.
  """
  _check_size(size)
  height, width = values.shape[1:3]
  q = queries.astype(jnp.float32)
  logits = jnp.stack([jnp.sum(q * k, axis=-1) for k in _shifts(keys.astype(jnp.float32), size, "constant")],
                     axis=-1) / math.sqrt(queries.shape[-1])
  logits = jnp.where(_inside(height, width, size), logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  neighbours = _shifts(values.astype(jnp.float32), size, "constant")
  y = sum(weights[..., k, None] * v for k, v in enumerate(neighbours))
  return y.astype(values.dtype)


def bilateral_dot(x: Array, size: int = NEIGHBOURHOOD) -> Array:
  """Dot-product bilateral filter: y_i = (1 / |Omega(i)|) sum_{j in Omega(i)} (x_i^T x_j) x_j (eq. 4.2).

  |Omega(i)| counts the neighbours inside the map (size**2 away from the border).

  Args:
    x: [batch, H, W, C].
    size: the neighbourhood Omega(i) is the size x size window (odd).

  Returns:
    [batch, H, W, C] in x's dtype.

  Raises:
    ConfigError: size not a positive odd number.
  """
  _check_size(size)
  xf = x.astype(jnp.float32)
  # Zero padding: a neighbour outside the map adds (x_i^T 0) 0 = 0 to the sum.
  y = sum(jnp.sum(xf * xj, axis=-1, keepdims=True) * xj for xj in _shifts(xf, size, "constant"))
  count = _inside(*x.shape[1:3], size).sum(axis=-1)[:, :, None].astype(np.float32)
  return (y / count).astype(x.dtype)


def mean_filter(x: Array, size: int = NEIGHBOURHOOD) -> Array:
  """Mean filter: size x size average pooling with stride 1, reflection padding.

  Args:
    x: [batch, H, W, C].
    size: window size (odd).

  Returns:
    [batch, H, W, C] in x's dtype.

  Raises:
    ConfigError: size not a positive odd number.
  """
  _check_size(size)
  y = sum(_shifts(x.astype(jnp.float32), size, "reflect")) / size**2
  return y.astype(x.dtype)


def median_filter(x: Array, size: int = NEIGHBOURHOOD) -> Array:
  """Median filter: y_i = median{x_j : j in Omega(i)} per channel (eq. 4.3), reflection padding.

  The window has an odd number of values, so the median is one of them (the
  gradient flows to that one). The 3x3 window goes through a selection network
  (`median_of_nine`), larger ones through a sort.

  Args:
    x: [batch, H, W, C].
    size: window size (odd).

  Returns:
    [batch, H, W, C] in x's dtype.

  Raises:
    ConfigError: size not a positive odd number.
  """
  _check_size(size)
  values = _shifts(x, size, "reflect")
  if size == 3:
    return median_of_nine(values)
  return jnp.sort(jnp.stack(values, axis=-1), axis=-1)[..., size**2 // 2]


# A selection network for the median of nine values (Paeth, Graphics Gems 1990; 19
# compare-exchanges): after these exchanges of positions (i, j), position 4 holds the median.
_MEDIAN9_EXCHANGES = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
                      (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median_of_nine(values: list[Array]) -> Array:
  """The elementwise median of nine equally shaped arrays, by a network of compare-exchanges.

  The 3x3 median filter's hot path: on XLA:CPU a sort of the stacked window
  took 89% of a PGD adversarial-training step of ResNet-14 with three median
  blocks. Each exchange selects with `where`, so the gradient reaches exactly
  one of the nine values, the one whose value is the median (as a sort's does;
  among equal values either may be chosen).
  """
  if len(values) != 9:
    raise ValueError(f"median_of_nine needs 9 arrays, got {len(values)}")
  p = list(values)
  for i, j in _MEDIAN9_EXCHANGES:
    in_order = p[i] <= p[j]
    p[i], p[j] = jnp.where(in_order, p[i], p[j]), jnp.where(in_order, p[j], p[i])
  return p[4]


# ----------------------------------------------------------------------- block


class DenoisingBlock(nn.Module):
  """A feature denoising block (fig. 4.4): y = x + BN(conv1x1(D(x))).

  Variables: 'theta' and 'phi' (the Gaussian forms' 1x1 embeddings, C -> C/2),
  'conv' (the 1x1 convolution, C -> C, no bias), 'bn' (the normalisation,
  scale initialised to zero).

  A fresh block with the residual connection is exactly the identity. With
  norm 'none' there is no scale to zero, so the 1x1 convolution's kernel
  starts at zero instead (then only `use_conv=False` with norm 'none' is
  not the identity at initialisation). Without the residual connection
  the normalisation keeps the usual scale of 1: a zero scale would there
  cut the backbone's signal, and every gradient before the block, at the
  start of training.

  Attributes:
    operation: the denoising operation D, one of `OPERATIONS`.
    use_conv: apply the 1x1 convolution (False: y = x + BN(D(x))).
    residual: add the input (False: y = BN(conv1x1(D(x)))).
    norm: `norms.NORMS` name.
    placement: 'stage' or 'block'; 'block' subsamples the non-local keys by
      2x2 max pooling (sec. 4.6.2).
    dtype: compute dtype of the convolutions and the normalisation.
    dot_order: `nonlocal_dot`'s computation order, one of `DOT_ORDERS`
      ('auto': the cheaper); the same result up to rounding.
  """

  operation: str
  use_conv: bool = True
  residual: bool = True
  norm: str = "batchnorm"
  placement: str = "stage"
  dtype: Any = jnp.float32
  dot_order: str = "auto"

  def __post_init__(self):
    if self.operation not in OPERATIONS:
      raise unknown_name("denoising operation", self.operation, OPERATIONS)
    if self.placement not in blocks.PLACEMENTS:
      raise ConfigError(f"denoising placement {self.placement!r} must be one of {', '.join(blocks.PLACEMENTS)}")
    if self.dot_order not in DOT_ORDERS:
      raise unknown_name("dot-product order", self.dot_order, DOT_ORDERS)
    if self.dot_order != "auto" and self.operation != "nonlocal_dot":
      raise ConfigError(f"denoising block: the computation order {self.dot_order!r} is an option of "
                        f"nonlocal_dot only, not of {self.operation}")
    super().__post_init__()

  def _embed(self, name: str, x: Array) -> Array:
    """A Gaussian form's 1x1 embedding theta or phi: [..., C] -> [..., max(1, C // 2)]."""
    return layers.conv(max(1, x.shape[-1] // 2), 1, dtype=self.dtype,
                       kernel_init=nn.initializers.normal(EMBEDDING_STD), name=name)(x)

  def _denoise(self, x: Array) -> Array:
    """The denoising operation D alone: x [batch, H, W, C] -> same shape and dtype."""
    op = self.operation
    keys = subsample_keys(x) if self.placement == "block" and op.startswith("nonlocal") else x
    if op == "nonlocal_gaussian":
      return nonlocal_gaussian(self._embed("theta", x), self._embed("phi", keys), keys)
    if op == "nonlocal_dot":
      return nonlocal_dot(x, keys, order=self.dot_order)
    if op == "bilateral_gaussian":
      return bilateral_gaussian(self._embed("theta", x), self._embed("phi", x), x)
    if op == "bilateral_dot":
      return bilateral_dot(x)
    if op == "mean":
      return mean_filter(x)
    if op == "median":
      return median_filter(x)
    return x

  @nn.compact
  def __call__(self, x: Array, use_batch_stats: bool) -> Array:
    """Denoises the features.

    Args:
      x: [batch, height, width, channels], any float dtype.
      use_batch_stats: normalise with the batch's statistics (and update the
        running ones: apply with mutable=['batch_stats']) instead of the
        running ones.

    Returns:
      [batch, height, width, channels] in x's dtype.
    """
    h = self._denoise(x)
    zero_branch = self.residual
    if self.use_conv:
      plain_norm = registry.parse_name(self.norm)[0] == "none"
      kernel_init = nn.initializers.zeros if zero_branch and plain_norm else layers.conv_kernel_init
      h = layers.conv(x.shape[-1], 1, dtype=self.dtype, kernel_init=kernel_init, name="conv")(h)
    h = norms.make_norm(self.norm, use_running_average=not use_batch_stats, dtype=self.dtype, name="bn",
                         zero_init=zero_branch)(h)
    y = (x + h if self.residual else h).astype(x.dtype)
    # The features before and after denoising, for the figures (apply with mutable=['intermediates']).
    self.sow("intermediates", "features_in", x)
    self.sow("intermediates", "features_out", y)
    return y


def denoising_factory(operation: str, *flags: str, norm: str, dtype, placement: str, name: str) -> DenoisingBlock:
  """Builds a `DenoisingBlock` from a block registry name 'denoise:<operation>[,<flag>...]'.

  Args:
    operation: one of `OPERATIONS`.
    *flags: any of 'no_conv' (drop the 1x1 convolution) and 'no_residual'
      (drop the residual connection), the ablations of table 4.1, and for
      nonlocal_dot 'gram' or 'affinity' (its computation order; default the
      cheaper).
    norm: `norms.NORMS` name.
    dtype: compute dtype.
    placement: 'stage' or 'block'.
    name: the block's module name.

  Returns:
    The (unbound) block.

  Raises:
    ConfigError: unknown operation, flag or placement.
  """
  unknown = [f for f in flags if f not in FLAGS]
  if unknown:
    raise ConfigError(f"denoising block: unknown flag(s) {', '.join(unknown)}; known: {', '.join(FLAGS)}")
  orders = [f for f in flags if f in DOT_ORDERS]
  if len(orders) > 1:
    raise ConfigError(f"denoising block: at most one computation order, got {', '.join(orders)}")
  return DenoisingBlock(operation=operation, use_conv="no_conv" not in flags, residual="no_residual" not in flags,
                        norm=norm, placement=placement, dtype=dtype, name=name,
                        dot_order=orders[0] if orders else "auto")

