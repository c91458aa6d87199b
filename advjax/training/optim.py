"""Optimisers and learning-rate schedules built from config data.

Schedules are written in epochs in the config (as the papers state them:
"lr 0.0025 dropped 10x after 50 epochs") and resolved to steps here, once.
Weight decay is an L2 penalty added to the gradient of kernels only, before
momentum, which is what PyTorch's `SGD(weight_decay=...)` does; biases and
normalisation parameters are excluded by a mask. A frozen part of the model
(a pretrained backbone, `model.freeze_backbone`) gets zero updates and no
optimiser state.
"""

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "piecewise", "cosine")


def decay_mask(params: Any) -> Any:
  """True for kernels (arrays of rank > 1), False for biases, scales and offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_schedule(cfg: ml_collections.ConfigDict, base_lr: float, steps_per_epoch: int,
                  total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step.

  Args:
    cfg: `config.schedule`.
    base_lr: peak learning rate.
    steps_per_epoch: to turn epoch boundaries into steps.
    total_steps: length of the run (for cosine decay).
  """
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  if cfg.name == "constant":
    main = optax.constant_schedule(base_lr)
  elif cfg.name == "piecewise":
    boundaries = {int(round(b * steps_per_epoch)) - warmup: cfg.decay_factor for b in cfg.boundaries}
    main = optax.piecewise_constant_schedule(base_lr, boundaries)
  elif cfg.name == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(1, total_steps - warmup))
  else:
    raise ValueError(f"unknown schedule {cfg.name!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup), main], [warmup])


def freeze(tx: optax.GradientTransformation, trainable: Callable[[str], bool]) -> optax.GradientTransformation:
  """`tx` on the parameters whose top-level name is `trainable`; zero updates elsewhere."""
  def labels(params):
    return {k: jax.tree.map(lambda _, t=("train" if trainable(k) else "frozen"): t, v) for k, v in params.items()}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int,
                   trainable: Callable[[str], bool] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser and its learning-rate schedule from `config.optimizer` and `config.schedule`.

  Args:
    config: the experiment config.
    steps_per_epoch: to turn epochs into steps.
    total_steps: the run's length.
    trainable: if given, only top-level parameters it accepts are trained.
  """
  tx, schedule = _make(config, steps_per_epoch, total_steps)
  return (tx if trainable is None else freeze(tx, trainable)), schedule


def _make(config: ml_collections.ConfigDict, steps_per_epoch: int,
          total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  cfg = config.optimizer
  schedule = make_schedule(config.schedule, cfg.learning_rate, steps_per_epoch, total_steps)
  if cfg.name == "sgd":
    core = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == "adam":
    core = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    # Decoupled decay: the penalty is part of adamw, not of the gradient.
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask), schedule
  elif cfg.name == "rmsprop":
    core = optax.rmsprop(schedule, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None)
  else:
    raise ValueError(f"unknown optimizer {cfg.name!r}")
  if cfg.weight_decay:
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), core), schedule
  return core, schedule
