"""Tiny classifiers trained on sklearn's 8x8 digits, shared by attack and evaluation tests.

Defined here rather than taken from advjax.models so the attack tests stay
independent of the model zoo; the modules follow its contract:
`__call__(x, train=False, use_batch_stats=None)`, x in [0, 1] NHWC.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits


class TinyCNN(nn.Module):
  """conv3x3(8) - relu - conv3x3(8) - relu - flatten - dense(10); optional BatchNorm."""
  batchnorm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, use_batch_stats: bool | None = None):
    use_batch_stats = train if use_batch_stats is None else use_batch_stats
    x = nn.Conv(8, (3, 3), padding="SAME")(x)
    if self.batchnorm:
      x = nn.BatchNorm(use_running_average=not use_batch_stats, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10)(x).astype(jnp.float32)



class TinySeg(nn.Module):
  """One 3x3 convolution to `num_classes` per-pixel logits [B, H, W, num_classes]."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False, use_batch_stats: bool | None = None):
    del train, use_batch_stats
    return nn.Conv(self.num_classes, (3, 3), padding="SAME")(x)


def _bind(model: nn.Module, variables):
  return lambda x: model.apply(variables, x)


def builder(model: nn.Module):
  """`variables -> (x -> logits)` for `model`, an EvalContext's model_fn; make it once (a static jit argument)."""
  return functools.partial(_bind, model)

@functools.lru_cache(maxsize=None)
def digits():
  """(x_train, y_train, x_test, y_test): [N, 8, 8, 1] float32 in [0, 1], int32 labels."""
  data = load_digits()
  x = (data.images / 16.0).astype(np.float32)[..., None]
  y = data.target.astype(np.int32)
  return x[:1400], y[:1400], x[1400:], y[1400:]


@functools.lru_cache(maxsize=None)
def trained(batchnorm: bool = False, steps: int = 80):
  """(model, variables) after a few Adam steps on the digits; cached per session."""
  x_train, y_train, _, _ = digits()
  model = TinyCNN(batchnorm=batchnorm)
  variables = model.init(jax.random.key(0), jnp.asarray(x_train[:2]))
  tx = optax.adam(1e-2)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, x, y):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, **state}, x, train=True,
                                      mutable=list(state))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    (_, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state)
    return optax.apply_updates(params, updates), new_state, opt_state

  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.choice(len(x_train), 128, replace=False)
    params, state, opt_state = step(params, state, opt_state, x_train[idx], y_train[idx])
  return model, {"params": params, **state}
