"""The train state: everything a step reads and writes, as one pytree.

`TrainState` extends Flax's with the BatchNorm statistics, the run's random
key and a dict of `extras` for the leaves that later objectives keep in the
state (a universal perturbation, its optimiser state, AdvProp's auxiliary
BatchNorm statistics under `AUX_BATCH_STATS`). The whole state is
replicated over the mesh and checkpointed as one tree.
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


# The key of `TrainState.extras` holding auxiliary BatchNorm statistics
# (AdvProp), one entry per collection name ('batch_stats_adv', ...).
AUX_BATCH_STATS = "aux_batch_stats"


class TrainState(train_state.TrainState):
  """Flax TrainState plus batch statistics, the run's key and extra leaves."""

  batch_stats: Any = None
  rng: jax.Array = None
  extras: Any = struct.field(default_factory=dict)


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict[str, Any]:
  """Initialises a model's variables on a batch of one zero image."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init({"params": rng, "dropout": rng}, x, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], extras: Any = None,
                       aux_bn_sets: Sequence[str] = ()) -> TrainState:
  """A fresh train state.

  Args:
    model: a classifier taking [batch, *image_shape] images in [0, 1].
    tx: the optimiser.
    rng: the run's root key; split into an init key and the state's key.
    image_shape: (height, width, channels).
    extras: objective-specific leaves (e.g. a universal perturbation); {} if None.
    aux_bn_sets: auxiliary BatchNorm sets (AdvProp, `advjax.models.aux_bn`):
      their params join `params`, their statistics `extras[AUX_BATCH_STATS]`.
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, image_shape)
  extras = {} if extras is None else dict(extras)
  if aux_bn_sets:
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = aux_bn.add_aux_sets(model, variables, aux_bn_sets, x)
    extras[AUX_BATCH_STATS] = aux_bn.aux_collections(variables)
  return TrainState.create(
      apply_fn=model.apply, params=variables["params"], tx=tx,
      batch_stats=variables.get("batch_stats", {}), rng=state_rng, extras=extras)
