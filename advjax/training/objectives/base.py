"""The objective protocol: what a training objective declares and how the trainer uses it.

An objective is a class registered by name (`config.objective`). It may
declare a config block of its own: `BLOCK` names it (`config.adversarial`,
`config.uat`, `config.advprop`) and `Config` is its frozen dataclass, whose
fields carry the defaults and whose `__post_init__` checks them (objectives
that share a block share the class). The experiment builds the objective once
from `ObjectiveContext` (the model, its own typed block, the loss settings
every objective shares, the task, the learning-rate schedule and the run's
length), so an objective never reads the experiment's ConfigDict, and the
trainer only ever calls these members:

  views(block)         (class method) the extra batch entries the data
                       pipeline must deliver, e.g. ('image_aug',) for
                       fine-grained AdvProp; () for most objectives
  validate(config, num_devices)
                       (class method) what its block cannot check alone, the
                       relations to the rest of the config (a heap size that
                       must divide the per-device batch, an activation the
                       SAT diagnostic needs); one ConfigError naming the field
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
import math
from typing import Any, ClassVar

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
class LossConfig:
  """`config.loss`: the supervised loss every objective trains on.

  Attributes:
    label_smoothing: weight of the uniform distribution in training targets.
    aux_weight: w in L(out) + w L(aux) for heads with an auxiliary classifier
      ('fcn_aux'; torchvision trains its FCNs with 0.5); only objectives with
      `supports_aux_loss` accept w > 0.
  """
  label_smoothing: float = 0.0
  aux_weight: float = 0.0

  def __post_init__(self):
    if not (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
      raise ConfigError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
    if not (math.isfinite(self.aux_weight) and 0.0 <= self.aux_weight <= 100.0):
      raise ConfigError(f"aux_weight={self.aux_weight!r} must be in [0, 100]")


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  """What an objective is built from.

  Attributes:
    model: the network being trained.
    block: the objective's own typed config block (an instance of its
      `Config`), or None for an objective without one.
    loss: the supervised loss settings (`config.loss`).
    task: scores the labels (classification or segmentation).
    schedule: the learning-rate schedule, logged as a metric.
    total_steps: the run's length in steps.
    steps_per_epoch: steps per pass over the training data.
  """
  model: nn.Module
  block: Any
  loss: LossConfig
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

  # The name of the objective's config block and its dataclass; None for none.
  BLOCK: ClassVar[str | None] = None
  Config: ClassVar[type | None] = None
  # Whether the objective trains a head's auxiliary classifier (`config.loss.aux_weight`).
  supports_aux_loss: ClassVar[bool] = False

  def __init__(self, ctx: ObjectiveContext):
    self.ctx = ctx
    self.model = ctx.model
    self.block = ctx.block
    self.task = ctx.task

  @classmethod
  def views(cls, block: Any) -> tuple[str, ...]:
    """Extra batch entries the pipeline must deliver, given the objective's block."""
    del block
    return ()

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks what the block cannot check alone (its relations to the rest of the config); raises ConfigError."""
    del config, num_devices

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

    With `config.loss.aux_weight` w > 0 the head's auxiliary classifier adds
    its own loss: L(out) + w L(aux), as torchvision trains its FCNs (w = 0.5).

    Returns:
      (loss, logits of the main output, updated model_state).
    """
    model = self.model if model is None else model
    smoothing = self.ctx.loss.label_smoothing
    weight = float(self.ctx.loss.aux_weight)
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
