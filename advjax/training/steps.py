"""Train and eval step factories, and their jit compilation over a mesh.

`make_train_step` turns an objective into a pure
`train_step(state, batch) -> (state, metrics)`; `compile_train_step` jits it
with the state replicated, the batch split over the `data` axis and the old
state donated. The step's randomness is `fold_in(state.rng, state.step)`, so a
run is a function of its seed whatever the device count, and a resumed run
repeats the uninterrupted one exactly.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from advjax import parallel
from advjax.training import objectives
from advjax.training.train_state import TrainState

TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]

# Objectives whose step is more than "differentiate a loss, update the weights"
# (e.g. universal adversarial training also updates a perturbation in
# `state.extras`) register a factory `(model, config, schedule) -> train_step`.
CUSTOM_STEPS: dict[str, Callable[[nn.Module, ml_collections.ConfigDict, optax.Schedule], TrainStep]] = {}


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule) -> TrainStep:
  """The train step of `config.objective`.

  Args:
    model: the classifier.
    config: the experiment config.
    schedule: the learning-rate schedule, logged as a metric.

  Returns:
    A pure `train_step(state, batch) -> (new_state, metrics)`; metrics are
    scalar means over the global batch.
  """
  if config.objective in CUSTOM_STEPS:
    return CUSTOM_STEPS[config.objective](model, config, schedule)
  loss_fn = objectives.make_loss_fn(model, config)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {"loss": loss, **metrics, "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
    return new_state, metrics

  return train_step


def compile_train_step(train_step: TrainStep, state: TrainState, mesh: Mesh) -> TrainStep:
  """jit over the mesh: state replicated and donated, batch data-parallel."""
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  return jax.jit(
      train_step,
      in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0)
