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

from advjax.registry import Registry
from advjax.training.objectives import adversarial, advprop, base, erm, uat
from advjax.training.objectives.base import LossObjective, Objective, ObjectiveContext

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


__all__ = ["LossObjective", "OBJECTIVES", "Objective", "ObjectiveContext", "adversarial", "advprop", "base",
           "erm", "get", "register_objective", "uat"]
