"""Adversarial training with per-example or heap adversaries (Madry et al.; shared adversarial training).

Both objectives minimise the sigma-weighted mix of the shared-adversarial-training
paper (sec. 4),

  sigma * L(theta, x_adv, y) + (1 - sigma) * L(theta, x, y),

with sigma = `config.adversarial.weight`, and read their block
`config.adversarial` (`AdversarialConfig`):

- `pgd_at`: x_adv from the per-example attack of `adversarial.attack`;
  sigma = 1 is Madry et al.'s PGD adversarial training.
- `shared_at`: x_adv from a heap adversary with heaps of
  `adversarial.heap_size` consecutive examples of a device's batch (the
  paper's sharedness s; `advjax.attacks.heap`).

The adversary sees the current weights but no gradient flows through it
(Danskin's theorem: the gradient of the max is the gradient at the argmax).
It attacks the network with the BatchNorm statistics `adversarial.bn_mode`
names ('eval': the running ones, 'batch': the attacked batch's, never
updated). The clean and adversarial examples go through the model in separate
training passes, so each is normalised with its own batch statistics; with
sigma = 1 the clean pass is skipped entirely. `adversarial.sat.softplus_grad`
smooths ReLU's backward pass for the attacker, the weights or both (`sat`,
Xie thesis table 5.1). Labels may be class indices or label maps: the task
scores them (per pixel for segmentation).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from advjax import attacks
from advjax.attacks import heap, pgd
from advjax.errors import ConfigError
from advjax.training import sat as sat_lib
from advjax.training.objectives import base


@dataclasses.dataclass(frozen=True)
class AdversaryConfig:
  """The training adversary, shared by the adversarial objectives' blocks.

  Attributes:
    attack: the attack (`pgd.AttackConfig`), eps and step sizes in 0-255
      pixel units; the default is PGD-7 with a random start at eps 8.
    bn_mode: BatchNorm while the attack runs: 'eval' normalises with the
      running statistics, 'batch' with the attacked batch's (never updated).
    sat: the softplus-gradient diagnostic of smooth adversarial training.
  """
  attack: pgd.AttackConfig = pgd.AttackConfig(init="uniform", num_steps=7)
  bn_mode: str = "eval"
  sat: sat_lib.SATConfig = sat_lib.SATConfig()

  def __post_init__(self):
    if self.bn_mode not in attacks.BN_MODES:
      raise ConfigError(f"bn_mode: unknown mode {self.bn_mode!r}; known: {', '.join(attacks.BN_MODES)}")


@dataclasses.dataclass(frozen=True)
class AdversarialConfig(AdversaryConfig):
  """`config.adversarial`, the block of `pgd_at` and `shared_at`.

  Attributes:
    weight: sigma in sigma * L(adv) + (1 - sigma) * L(clean), in [0, 1].
    heap_size: s of shared adversarial training (the paper's sharedness),
      examples per heap sharing one perturbation; `shared_at` only (`pgd_at`
      is s = 1); it must divide the per-device batch.
  """
  weight: float = 1.0
  heap_size: int = 1

  def __post_init__(self):
    super().__post_init__()
    if not (math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
      raise ConfigError(f"weight={self.weight!r}: sigma must be in [0, 1]")
    if not (isinstance(self.heap_size, int) and 1 <= self.heap_size <= 2**24):
      raise ConfigError(f"heap_size={self.heap_size!r} must be an int >= 1")


class AdversarialTraining(base.LossObjective):
  """`pgd_at` (heaps of 1) and `shared_at` (heaps of `config.adversarial.heap_size`)."""

  BLOCK = "adversarial"
  Config = AdversarialConfig
  heap = False
  supports_aux_loss = True

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict, num_devices: int) -> None:
    a = config.adversarial
    sat_lib.check_activation(sat_lib.SATConfig(**a.sat), config.model.activation, "adversarial.sat")
    if not cls.heap and a.heap_size != 1:
      raise ConfigError(f"config.adversarial.heap_size: {a.heap_size} is a heap adversary; "
                        "use objective 'shared_at' (pgd_at attacks every example on its own)")
    per_device = config.batch_size // num_devices
    if per_device % a.heap_size:
      raise ConfigError(f"config.adversarial.heap_size: s={a.heap_size} must divide the per-device batch "
                        f"{per_device} (batch_size {config.batch_size} over {num_devices} devices) so heaps never "
                        "straddle devices")

  def __init__(self, ctx: base.ObjectiveContext):
    super().__init__(ctx)
    self.attack_cfg = self.block.attack
    self.sigma = float(self.block.weight)
    self.heap_size = int(self.block.heap_size) if self.heap else 1
    # ReLU's backward pass may be smoothed for either side (SAT diagnostic, table 5.1).
    self.attack_model, self.train_model = sat_lib.attacker_and_trainee(self.model, self.block.sat)

  def adversary(self, logits_fn, x, y, rng):
    if self.heap_size == 1:
      return pgd.attack(logits_fn, x, y, rng, self.attack_cfg, task=self.task)
    return heap.heap_attack(logits_fn, x, y, rng, self.attack_cfg, self.heap_size, task=self.task)

  def loss(self, params, model_state, batch, rng):
    attack_rng, adv_rng, clean_rng = jax.random.split(rng, 3)
    y = batch["label"]
    frozen = jax.lax.stop_gradient({"params": params, **model_state})
    logits_fn = attacks.make_logits_fn(self.attack_model, frozen, self.block.bn_mode)
    x_adv = jax.lax.stop_gradient(self.adversary(logits_fn, batch["image"], y, attack_rng))
    adv_loss, adv_logits, model_state = self.supervised_loss(params, model_state, x_adv, y, adv_rng,
                                                             self.train_model)
    loss = self.sigma * adv_loss
    metrics = {"adv_accuracy": jnp.mean(self.task.correct(adv_logits, y))}
    if self.sigma < 1.0:
      clean_loss, clean_logits, model_state = self.supervised_loss(params, model_state, batch["image"], y,
                                                                   clean_rng, self.train_model)
      loss += (1.0 - self.sigma) * clean_loss
      metrics["accuracy"] = jnp.mean(self.task.correct(clean_logits, y))
    return loss, (model_state, metrics)


class SharedAdversarialTraining(AdversarialTraining):
  """`shared_at`: sigma * rho_heap(s) + (1 - sigma) * rho_exp with s = config.adversarial.heap_size."""

  heap = True
