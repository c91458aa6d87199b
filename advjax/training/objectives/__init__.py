"""Training objectives, one registry by name (`config.objective`).

  erm               empirical risk: cross-entropy on clean data (`erm`)
  pgd_at            sigma L(PGD adversary) + (1 - sigma) L(clean) (Madry et al.; `adversarial`)
  shared_at         the same with a heap adversary of sharedness s (shared adversarial training)
  uat_alternating   universal adversarial training, algorithm 3 (`uat`)
  uat_simultaneous  low-cost universal adversarial training, algorithm 4 (`uat`)
  advprop           AdvProp and the mixture-BN strategies (Xie thesis chs. 6-7; `advprop`)

`base` defines the protocol every objective follows; a new objective is one
module with an `Objective` subclass and one `register_objective` call, and the
trainer, eval.py and sweep.py need no change.
"""

from collections.abc import Mapping
from typing import Any

from advjax import typed_config
from advjax.registry import Registry
from advjax.training.objectives import adversarial, advprop, base, erm, uat
from advjax.training.objectives.base import LossConfig, LossObjective, Objective, ObjectiveContext

OBJECTIVES: Registry = Registry("objective", {
    "erm": erm.ERM,
    "pgd_at": adversarial.AdversarialTraining,
    "shared_at": adversarial.SharedAdversarialTraining,
    "uat_alternating": uat.AlternatingUAT,
    "uat_simultaneous": uat.SimultaneousUAT,
    "advprop": advprop.AdvProp,
})
# Adds an objective class to the registry (see `base` for the protocol).
register_objective = OBJECTIVES.register


def get(name: str) -> type[Objective]:
  """The objective class registered as `name`; ConfigError if there is none."""
  return OBJECTIVES[name]


def build(config: Mapping[str, Any], *, model: Any, task: Any, schedule: Any, total_steps: int,
          steps_per_epoch: int) -> Objective:
  """The objective `config.objective`, given its own block and `config.loss` typed (nothing else of `config`).

  Raises:
    ConfigError: an unknown objective, or a bad field of either block.
  """
  cls = get(config["objective"])
  block = None if cls.BLOCK is None else typed_config.from_mapping(cls.Config, config[cls.BLOCK],
                                                                   f"config.{cls.BLOCK}")
  loss = typed_config.from_mapping(LossConfig, config.get("loss", {}), "config.loss")
  return cls(ObjectiveContext(model=model, block=block, loss=loss, task=task, schedule=schedule,
                              total_steps=total_steps, steps_per_epoch=steps_per_epoch))


__all__ = ["LossConfig", "LossObjective", "OBJECTIVES", "Objective", "ObjectiveContext", "adversarial", "advprop", "base",
           "build", "erm", "get", "register_objective", "uat"]
