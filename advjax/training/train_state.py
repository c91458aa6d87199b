"""The train state: everything a step reads and writes, as one pytree.

`TrainState` extends Flax's with the model's statistics collections
(`model_state`: 'batch_stats', and AdvProp's auxiliary 'batch_stats_<set>'),
the run's random key, and a dict of `extras` for the leaves an objective keeps
of its own (universal adversarial training's perturbation and its optimiser
state). The whole state is replicated over the mesh and checkpointed as one
tree; `variables` is what the model is applied to.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from advjax.models import aux_bn


class TrainState(train_state.TrainState):
  """Flax TrainState plus the model's statistics, the run's key and extra leaves."""

  model_state: Any = struct.field(default_factory=dict)
  rng: jax.Array = None
  extras: Any = struct.field(default_factory=dict)

  @property
  def variables(self) -> dict[str, Any]:
    """The model's variables: {'params': ..., **model_state}."""
    return {"params": self.params, **self.model_state}


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """Initialises a model's variables on a batch of one zero image."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init({"params": rng, "dropout": rng}, x, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], extras: Any = None,
                       aux_bn_sets: Sequence[str] = ()) -> TrainState:
  """A fresh train state.

  Args:
    model: a network taking [batch, *image_shape] images in [0, 1].
    tx: the optimiser.
    rng: the run's root key; split into an init key and the state's key.
    image_shape: (height, width, channels).
    extras: objective-specific leaves (e.g. a universal perturbation); {} if None.
    aux_bn_sets: auxiliary BatchNorm sets (AdvProp, `advjax.models.aux_bn`):
      their params join `params`, their statistics `model_state`.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, image_shape)
  if aux_bn_sets:
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = aux_bn.add_aux_sets(model, variables, aux_bn_sets, x)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=model_state,
                           rng=state_rng, extras={} if extras is None else dict(extras))
