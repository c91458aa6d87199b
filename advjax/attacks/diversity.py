"""Input diversity T(X; p) of DI2-FGSM (Xie thesis, ch. 3, eq. 3.5-3.6).

With probability p the attacked batch is randomly resized to rnd x rnd, rnd
uniform in [H, floor(H * 330 / 299)] (the thesis' [299, 330] for 299-pixel
inputs), and zero-padded at a random offset to a fixed pad x pad canvas; with
probability 1 - p it passes unchanged. One coin, one size and one offset are
drawn per call, i.e. per batch and iteration, as in the reference
implementation.

Unlike Inception, most models here need a fixed input size, so the padded
canvas is resized back to H x W (bilinear); this keeps a static output shape
under jit, which both branches of the coin share. The random size is traced,
so the resize is selected with `lax.switch` over the (static, few) possible
sizes, and the padding is a `lax.dynamic_update_slice` into zeros. Every
operation is differentiable, so the attack gradient flows through T.
"""

import jax
import jax.numpy as jnp
from jax import lax

# Thesis: inputs of 299 pixels, rnd in [299, 330], canvas of 330 pixels.
RESIZE_RATIO = 330.0 / 299.0


def _pad_size(size: int, ratio: float) -> int:
  return max(size + 1, int(size * ratio))


def random_resize_pad(rng: jax.Array, x: jax.Array, ratio: float = RESIZE_RATIO,
                      method: str = "nearest") -> jax.Array:
  """Always applies the transformation: random resize, random zero pad, resize back.

  Args:
    rng: PRNG key.
    x: [batch, height, width, channels] images.
    ratio: canvas size / input size; rnd is uniform in [H, floor(H * ratio)].
    method: `jax.image.resize` method for the random resize ('nearest' as in
      the reference implementation).

  Returns:
    [batch, height, width, channels] transformed images.
  """
  _, h, w, c = x.shape
  pad_h, pad_w = _pad_size(h, ratio), _pad_size(w, ratio)
  k_size, k_top, k_left = jax.random.split(rng, 3)
  # One rnd for both sides keeps the aspect ratio of square inputs, as rnd x rnd.
  extra = jax.random.randint(k_size, (), 0, pad_h - h + 1)
  top_u = jax.random.uniform(k_top)
  left_u = jax.random.uniform(k_left)

  def place(e):
    rh, rw = h + e, min(w + e, pad_w)
    resized = jax.image.resize(x, (x.shape[0], rh, rw, c), method=method)
    top = jnp.floor(top_u * (pad_h - rh + 1)).astype(jnp.int32)
    left = jnp.floor(left_u * (pad_w - rw + 1)).astype(jnp.int32)
    canvas = jnp.zeros((x.shape[0], pad_h, pad_w, c), x.dtype)
    return lax.dynamic_update_slice(canvas, resized, (0, top, left, 0))

  padded = lax.switch(extra, [lambda e=e: place(e) for e in range(pad_h - h + 1)])
  return jax.image.resize(padded, x.shape, method="linear")


def input_diversity(rng: jax.Array, x: jax.Array, prob: float, ratio: float = RESIZE_RATIO,
                    method: str = "nearest") -> jax.Array:
  """T(X; p) of eq. 3.6: transformed with probability `prob`, else `x` itself.

  Args:
    rng: PRNG key, fresh per attack iteration.
    x: [batch, height, width, channels] images.
    prob: static probability p; p = 0 returns `x` untouched (so DI2-FGSM is
      bitwise I-FGSM), p = 1 always transforms.
    ratio: see `random_resize_pad`.
    method: see `random_resize_pad`.

  Returns:
    [batch, height, width, channels] images.
  """
  if prob <= 0.0:
    return x
  k_coin, k_t = jax.random.split(rng)
  if prob >= 1.0:
    return random_resize_pad(k_t, x, ratio, method)
  coin = jax.random.bernoulli(k_coin, prob)
  return lax.cond(coin, lambda v: random_resize_pad(k_t, v, ratio, method), lambda v: v, x)
