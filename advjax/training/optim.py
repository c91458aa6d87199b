"""Optimisers and learning-rate schedules built from config data.

Schedules are written in epochs in the config (as the papers state them:
"lr 0.0025 dropped 10x after 50 epochs") and resolved to steps here, once.
Weight decay is an L2 penalty added to the gradient of kernels only, before
momentum, which is what PyTorch's `SGD(weight_decay=...)` does; biases and
normalisation parameters are excluded by a mask. A frozen part of the model
(a pretrained backbone, `model.freeze_backbone`) gets zero updates and no
optimiser state.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from advjax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "piecewise", "cosine")


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """`config.optimizer`.

  Attributes:
    name: one of `OPTIMIZERS`.
    learning_rate: the peak learning rate.
    momentum: SGD and RMSProp momentum.
    nesterov: Nesterov momentum for SGD.
    b1, b2: Adam's betas.
    decay: RMSProp's decay.
    eps: Adam's and RMSProp's epsilon.
    weight_decay: L2 penalty on kernels only (biases and norm parameters excluded).
  """
  name: str = "sgd"
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  b1: float = 0.9
  b2: float = 0.999
  decay: float = 0.9
  eps: float = 1e-8
  weight_decay: float = 0.0

  def __post_init__(self):
    _check(self.name in OPTIMIZERS, f"name: unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")
    for field, low, high, low_ok in (("learning_rate", 0.0, 1e3, True), ("momentum", 0.0, 0.9999, True),
                                     ("b1", 0.0, 0.9999, True), ("b2", 0.0, 0.999999, True),
                                     ("decay", 0.0, 0.9999, True), ("eps", 0.0, 1.0, False),
                                     ("weight_decay", 0.0, 1.0, True)):
      value = getattr(self, field)
      _check(math.isfinite(value) and (low <= value if low_ok else low < value) and value <= high,
             f"{field}: must be a finite number in {'[' if low_ok else '('}{low}, {high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """`config.schedule`: the learning rate over training, in epochs.

  Attributes:
    name: one of `LR_SCHEDULES`.
    boundaries: piecewise: epochs at which the rate is multiplied by decay_factor.
    decay_factor: the piecewise factor.
    warmup_epochs: linear warm-up from 0 before the schedule.
  """
  name: str = "constant"
  boundaries: tuple = ()
  decay_factor: float = 0.1
  warmup_epochs: float = 0.0

  def __post_init__(self):
    _check(self.name in LR_SCHEDULES, f"name: unknown schedule {self.name!r}; known: {', '.join(LR_SCHEDULES)}")
    _check(all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b >= 0
               for b in self.boundaries), f"boundaries: must be finite, non-negative epochs, got {self.boundaries!r}")
    _check(list(self.boundaries) == sorted(self.boundaries), f"boundaries: must be increasing, got {self.boundaries!r}")
    _check(math.isfinite(self.decay_factor) and 0 < self.decay_factor <= 1e3,
           f"decay_factor: must be a finite number in (0, 1000], got {self.decay_factor!r}")
    _check(math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= 1e6,
           f"warmup_epochs: must be a finite number in [0, 1e6], got {self.warmup_epochs!r}")


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
    raise ConfigError(f"unknown schedule {cfg.name!r}")
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
    raise ConfigError(f"unknown optimizer {cfg.name!r}")
  if cfg.weight_decay:
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), core), schedule
  return core, schedule
