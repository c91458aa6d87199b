"""Hand-written linear classifiers with fixed weights, and their NumPy twins.

`model(seed)` returns (logits_fn, W, b) with logits = flatten(x) @ W + b on
4x4x1 images and 3 classes; tests compare the JAX analyses against the same
arithmetic done in NumPy.
"""

import functools

import jax.numpy as jnp
import numpy as np

SHAPE = (4, 4, 1)
CLASSES = 3


@functools.lru_cache(maxsize=None)
def model(seed: int, scale: float = 3.0):
  """(logits_fn, W [16, 3], b [3]) for a seed; cached so jit sees one closure per seed."""
  rng = np.random.default_rng(seed)
  w = (scale * rng.standard_normal((int(np.prod(SHAPE)), CLASSES))).astype(np.float32)
  b = (0.1 * rng.standard_normal(CLASSES)).astype(np.float32)
  wj, bj = jnp.asarray(w), jnp.asarray(b)

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ wj + bj

  return logits_fn, w, b


def np_logits(w, b, x):
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1) @ w.astype(np.float64) + b


def np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def np_cross_entropy(z, y):
  return -np.log(np_softmax(z)[np.arange(len(y)), y])


def images(seed: int, n: int, shape=SHAPE):
  """[n, *shape] float32 uniform images in [0, 1]."""
  return np.random.default_rng(seed).uniform(0, 1, (n,) + tuple(shape)).astype(np.float32)
