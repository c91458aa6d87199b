"""Optimisers and learning-rate schedules built from config data.

Schedules are written in epochs in the config (as the papers state them:
"lr 0.0025 dropped 10x after 50 epochs") and resolved to steps here, once.
Weight decay is an L2 penalty added to the gradient of kernels only, before
momentum, which is what PyTorch's `SGD(weight_decay=...)` does; biases and
normalisation parameters are excluded by a mask.
"""

from typing import Any

import jax
import ml_collections
import optax


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


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser and its learning-rate schedule from `config.optimizer` and `config.schedule`."""
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
