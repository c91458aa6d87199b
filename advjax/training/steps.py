"""Train and eval step factories, and their jit compilation over a mesh.

`make_train_step` turns an objective into a pure
`train_step(state, batch) -> (state, metrics)`; `compile_train_step` jits it
with the state replicated, the batch split over the `data` axis and the old
state donated. The step's randomness is `fold_in(state.rng, state.step)`, so a
run is a function of its seed whatever the device count, and a resumed run
repeats the uninterrupted one exactly.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from advjax import parallel
from advjax.attacks import losses
from advjax.training import objectives
from advjax.training.train_state import TrainState

TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]


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


def make_logits_fn(model: nn.Module, variables: dict[str, Any], bn_mode: str = "eval") -> Callable[[jax.Array], jax.Array]:
  """A closure `x -> logits` for attacks and evaluation; it never changes model state.

  Args:
    model: the classifier.
    variables: {'params': ..., 'batch_stats': ...}.
    bn_mode: 'eval' normalises with the running statistics; 'batch' with the
      statistics of the batch being attacked, whose update is discarded.
  """
  if bn_mode == "eval":
    return lambda x: model.apply(variables, x, train=False)
  if bn_mode == "batch":
    return lambda x: model.apply(variables, x, train=False, use_batch_stats=True, mutable=["batch_stats"])[0]
  raise ValueError(f"unknown bn_mode {bn_mode!r}; known: eval, batch")


def state_variables(state: TrainState) -> dict[str, Any]:
  """The model variables held by a train state."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def make_eval_step(model: nn.Module) -> Callable[[TrainState, dict], dict]:
  """`eval_step(state, batch) -> {'correct', 'count', 'loss'}` sums over real (mask 1) examples."""

  def eval_step(state: TrainState, batch: dict) -> dict:
    logits = make_logits_fn(model, state_variables(state))(batch["image"])
    mask = batch["mask"]
    return {
        "correct": jnp.sum(losses.correct(logits, batch["label"]) * mask),
        "loss": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask),
        "count": jnp.sum(mask),
    }

  return eval_step
