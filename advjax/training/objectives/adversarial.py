"""Adversarial training with per-example or heap adversaries (Madry et al.; shared adversarial training).

Both objectives minimise the sigma-weighted mix of the shared-adversarial-training
paper (sec. 4),

  sigma * L(theta, x_adv, y) + (1 - sigma) * L(theta, x, y),

with sigma = `config.adv_weight`:

- `pgd_at`: x_adv from the per-example attack of `config.attack` (sharedness
  1); sigma = 1 is Madry et al.'s PGD adversarial training.
- `shared_at`: x_adv from a heap adversary of sharedness `config.sharedness`:
  one perturbation per heap of s consecutive examples of a device's batch
  (`advjax.attacks.heap`).

The adversary sees the current weights but no gradient flows through it
(Danskin's theorem: the gradient of the max is the gradient at the argmax).
It attacks the network with the BatchNorm statistics `config.attack_bn_mode`
names ('eval': the running ones, 'batch': the attacked batch's, never
updated). The clean and adversarial examples go through the model in separate
training passes, so each is normalised with its own batch statistics; with
sigma = 1 the clean pass is skipped entirely. `config.sat.softplus_grad`
smooths ReLU's backward pass for the attacker, the weights or both (`sat`,
Xie thesis table 5.1). Labels may be class indices or label maps: the task
scores them (per pixel for segmentation).
"""

import jax
import jax.numpy as jnp
import ml_collections

from advjax import attacks
from advjax.attacks import heap, pgd
from advjax.errors import ConfigError
from advjax.training import sat
from advjax.training.objectives import base


def _check_attack(config: ml_collections.ConfigDict) -> None:
  try:
    pgd.AttackConfig.from_config(config.attack)
  except ConfigError as e:
    raise ConfigError(f"config.attack: {e}") from e
  if config.attack_bn_mode not in attacks.BN_MODES:
    raise ConfigError(f"config.attack_bn_mode: unknown mode {config.attack_bn_mode!r}; "
                      f"known: {', '.join(attacks.BN_MODES)}")


class AdversarialTraining(base.LossObjective):
  """`pgd_at` (sharedness 1) and `shared_at` (sharedness `config.sharedness`)."""

  heap = False
  supports_aux_loss = True

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    _check_attack(config)
    sat.validate(config)

  def __init__(self, ctx: base.ObjectiveContext):
    super().__init__(ctx)
    self.attack_cfg = pgd.AttackConfig.from_config(self.config.attack)
    self.sigma = float(self.config.adv_weight)
    self.sharedness = int(self.config.sharedness) if self.heap else 1
    # ReLU's backward pass may be smoothed for either side (SAT diagnostic, table 5.1).
    self.attack_model, self.train_model = sat.attacker_and_trainee(self.model, self.config)

  def adversary(self, logits_fn, x, y, rng):
    if self.sharedness == 1:
      return pgd.attack(logits_fn, x, y, rng, self.attack_cfg, task=self.task)
    return heap.heap_attack(logits_fn, x, y, rng, self.attack_cfg, self.sharedness, task=self.task)

  def loss(self, params, model_state, batch, rng):
    attack_rng, adv_rng, clean_rng = jax.random.split(rng, 3)
    y = batch["label"]
    frozen = jax.lax.stop_gradient({"params": params, **model_state})
    logits_fn = attacks.make_logits_fn(self.attack_model, frozen, self.config.attack_bn_mode)
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
  """`shared_at`: sigma * rho_heap(s) + (1 - sigma) * rho_exp with s = config.sharedness."""

  heap = True
