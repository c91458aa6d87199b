"""The objective protocol: what a training objective declares and how the trainer uses it.

An objective is a class registered by name (`config.objective`). The
experiment builds it once from `ObjectiveContext` (the model, the config,
the task, the learning-rate schedule and the run's length) and the trainer
only ever calls these members:

  views(config)        (class method) the extra batch entries the data
                       pipeline must deliver, e.g. ('image_aug',) for
                       fine-grained AdvProp; () for most objectives
  validate(config)     (class method) checks the config fields it reads and
                       raises one ConfigError naming the first bad one
  config_block()       (class method) its own documented config block, if any
                       (`config.uat`, `config.advprop`), merged into the base config
  bn_sets()            auxiliary BatchNorm sets the variables must hold
  init_extras(shape)   leaves of its own in `TrainState.extras` (a universal
                       perturbation and its optimiser state)
  train_step(state, batch) -> (state, metrics)
                       the pure step, jit-compiled by the trainer
  eval_model()         the model evaluation applies to the variables (the
                       main or an auxiliary BatchNorm set)

`LossObjective` is the common case: it defines `loss(params, model_state,
batch, rng) -> (loss, (model_state, metrics))` and inherits a `train_step`
that differentiates it and applies the optimiser. Objectives that update more
than the weights (universal adversarial training updates a perturbation, AdvProp
switches to running statistics late in training) override `train_step`.

The step's randomness is `fold_in(state.rng, state.step)`, so a run is a
function of its seed whatever the device count, and a resumed run repeats
the uninterrupted one exactly.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from advjax.errors import ConfigError
from advjax.tasks import Task
from advjax.training.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  """What an objective is built from.

  Attributes:
    model: the network being trained.
    config: the experiment config.
    task: scores the labels (classification or segmentation).
    schedule: the learning-rate schedule, logged as a metric.
    total_steps: the run's length in steps.
    steps_per_epoch: steps per pass over the training data.
  """
  model: nn.Module
  config: ml_collections.ConfigDict
  task: Task
  schedule: optax.Schedule
  total_steps: int
  steps_per_epoch: int


def apply_train(model: nn.Module, params: Any, model_state: dict, images: jax.Array,
                rng: jax.Array) -> tuple[jax.Array, dict]:
  """A training-mode forward pass: batch statistics used and updated, dropout on.

  Args:
    model: the network (or a twin of it, e.g. with another BatchNorm set).
    params: its parameters.
    model_state: its statistics collections ({'batch_stats': ...}, possibly {}).
    images: [batch, H, W, C] in [0, 1].
    rng: dropout key.

  Returns:
    logits and `model_state` with the updated collections.
  """
  mutable = list(model_state) or False
  out = model.apply({"params": params, **model_state}, images, train=True, mutable=mutable,
                    rngs={"dropout": rng})
  if not mutable:
    return out, model_state
  logits, updates = out
  return logits, {**model_state, **updates}


# What a head sows into 'intermediates' for its auxiliary classifier ('fcn_aux').
AUX_LOGITS = "aux_logits"


def apply_train_with_aux(model: nn.Module, params: Any, model_state: dict, images: jax.Array,
                         rng: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
  """`apply_train` that also returns the auxiliary classifier's logits the head sows.

  Returns:
    (logits, auxiliary logits of the same shape, `model_state` updated).

  Raises:
    ConfigError: the model's head sows no auxiliary logits.
  """
  out, updates = model.apply({"params": params, **model_state}, images, train=True,
                             mutable=list(model_state) + ["intermediates"], rngs={"dropout": rng})
  sown = [v for path, v in traverse_util.flatten_dict(dict(updates.pop("intermediates", {}))).items()
          if path[-1] == AUX_LOGITS]
  if len(sown) != 1:
    raise ConfigError(f"aux_loss_weight > 0 needs a head with one auxiliary classifier (e.g. 'fcn_aux'); "
                      f"this model's head sows {len(sown)}")
  return out, sown[0][0], {**model_state, **updates}


def learning_rate(schedule: optax.Schedule, step: jax.Array) -> jax.Array:
  """The logged learning rate of `step`."""
  return jnp.asarray(schedule(step), jnp.float32)


class Objective(abc.ABC):
  """Base class of training objectives (see the module docstring)."""

  def __init__(self, ctx: ObjectiveContext):
    self.ctx = ctx
    self.model = ctx.model
    self.config = ctx.config
    self.task = ctx.task

  @classmethod
  def views(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Extra batch entries the pipeline must deliver."""
    del config
    return ()

  # Whether the objective trains a head's auxiliary classifier (`config.aux_loss_weight`).
  supports_aux_loss = False

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """Checks the config fields this objective reads; raises ConfigError."""
    del config

  @classmethod
  def config_block(cls) -> tuple[str, ml_collections.ConfigDict] | None:
    """(field name, documented default block) merged into the base config, or None."""
    return None

  def bn_sets(self) -> tuple[str, ...]:
    """Auxiliary BatchNorm sets the variables must hold (AdvProp)."""
    return ()

  def init_extras(self, image_shape: tuple[int, ...]) -> dict:
    """Leaves of this objective's own in `TrainState.extras`."""
    del image_shape
    return {}

  def eval_model(self) -> nn.Module:
    """The model evaluation applies to the variables."""
    return self.model

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One pure training step; metrics are scalar means over the global batch."""


class LossObjective(Objective):
  """An objective given by a loss that the default step differentiates.

  A loss built on `supervised_loss` trains a head's auxiliary classifier
  too; such an objective sets `supports_aux_loss = True`.
  """

  def supervised_loss(self, params: Any, model_state: dict, images: jax.Array, labels: jax.Array,
                      rng: jax.Array, model: nn.Module | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """A training pass and the mean (label-smoothed) task loss on (images, labels).

    With `config.aux_loss_weight` w > 0 the head's auxiliary classifier adds
    its own loss: L(out) + w L(aux), as torchvision trains its FCNs (w = 0.5).

    Returns:
      (loss, logits of the main output, updated model_state).
    """
    model = self.model if model is None else model
    smoothing = self.config.label_smoothing
    weight = float(self.config.aux_loss_weight)
    if weight == 0.0:
      logits, model_state = apply_train(model, params, model_state, images, rng)
      return jnp.mean(self.task.loss(logits, labels, smoothing)), logits, model_state
    logits, aux, model_state = apply_train_with_aux(model, params, model_state, images, rng)
    loss = jnp.mean(self.task.loss(logits, labels, smoothing)) + weight * jnp.mean(
        self.task.loss(aux, labels, smoothing))
    return loss, logits, model_state

  @abc.abstractmethod
  def loss(self, params: Any, model_state: dict, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    """(scalar loss, (updated model_state, metrics)) of one batch."""

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(self.loss, has_aux=True)
    (loss, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, rng)
    new_state = state.apply_gradients(grads=grads, model_state=model_state)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate(self.ctx.schedule, state.step)}
    return new_state, metrics
