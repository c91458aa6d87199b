"""Training-mode BatchNorm whose backward pass is fast on XLA:CPU.

Arithmetic (flax `nn.BatchNorm`'s, and PyTorch's `BatchNorm2d` in training):
over the N = batch x height x width positions of each channel,

    mean = E[x],  var = max(E[x^2] - mean^2, 0)            (float32, biased)
    y    = (x - mean) * (rsqrt(var + eps) * scale) + bias

`advjax.models.norms.BatchNorm` computes that with autodiff; on the CPU
backend it calls `normalize_with_batch_statistics` below instead, the same
forward values with a backward pass written for XLA:CPU. There, a reduction
over the leading axes of an [N, C] array runs on one core, and autodiff of
the statistics puts several of them in the backward pass. Here the backward
pass is the closed form

    dx = (g - sum(g)/N - xhat * sum(g * xhat)/N) * rsqrt(var + eps) * scale
    dscale = sum(g * xhat),  dbias = sum(g),   xhat = (x - mean) * rsqrt(var + eps)

(a custom VJP; the statistics' own cotangents, nonzero only when a loss
reads them, are added exactly), and its two sums are written on CPU as a
vector-matrix product (`ones[N] @ g[N, C]`), which the CPU backend runs as a
multi-threaded matrix multiply. Training-mode BatchNorm + ReLU, forward and
backward, on [128, 28, 28, 32]: 18.2 ms with `nn.BatchNorm`, 10.8 ms with
this (PyTorch channels_last: 7.9 ms), idle 2-core machine.

The forward statistics stay `jnp.mean`s, as in flax. Computing them as dots
too made the whole layer 2.2x faster, but their rounding then depended on
how the batch was sharded: the 1-device and 8-device forward passes differed
in the last bit, a first-maximum max pool over the digits' flat background
then routed gradients differently, and the two runs' training losses parted
by 1e-3 after one step. With `jnp.mean` they agree as with `nn.BatchNorm`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _row_sums(x2: Array) -> Array:
  """Sum over axis 0 of a float32 [N, C] array, as a multi-threaded dot."""
  return jnp.dot(jnp.ones((x2.shape[0],), x2.dtype), x2, precision=lax.Precision.HIGHEST)


def _statistics(x2: Array) -> tuple[Array, Array, Array]:
  """(mean, biased variance, x2 - mean) of float32 rows."""
  mean = jnp.mean(x2, axis=0)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x2), axis=0) - jnp.square(mean))
  return mean, var, x2 - mean


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_with_batch_statistics(x2: Array, scale: Array, bias: Array, epsilon: float
                                    ) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm of float32 [N, C] rows.

  Args:
    x2: [N, C] float32 activations, one row per position.
    scale, bias: [C] float32 affine parameters.
    epsilon: added to the variance (static).

  Returns:
    (y [N, C] float32, mean [C], var [C]): the normalised rows and the batch
    statistics (biased variance) that the running averages take in.
  """
  return _forward(x2, scale, bias, epsilon)[0]


def _forward(x2, scale, bias, epsilon):
  mean, var, centred = _statistics(x2)
  inv = lax.rsqrt(var + epsilon)
  y = centred * (inv * scale) + bias
  return (y, mean, var), (centred, inv, scale)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  centred, inv, scale = residuals
  g, g_mean, g_var = cotangents
  n = centred.shape[0]
  xhat = centred * inv
  d_bias = _row_sums(g)
  d_scale = _row_sums(g * xhat)
  dx = (g - d_bias / n - xhat * (d_scale / n)) * (inv * scale)
  # Direct paths through the returned statistics: d mean/dx = 1/N, d var/dx = 2 (x - mean)/N.
  dx = dx + g_mean / n + centred * (2.0 * g_var / n)
  return dx, d_scale, d_bias


normalize_with_batch_statistics.defvjp(_forward, _backward)
