"""Training objectives: what loss a train step minimises.

An objective is built from the model and the config and returns a pure
`loss_fn(params, batch_stats, batch, rng) -> (loss, (batch_stats, metrics))`
that `steps.make_train_step` differentiates with respect to `params`.

- `erm`: empirical risk, the mean cross-entropy on clean examples.
- `pgd_at`: adversarial training (Madry et al.) with the sigma-weighted mix
  sigma * L(x_adv) + (1 - sigma) * L(x) of the shared-adversarial-training
  paper (section 4); sigma = 1 is plain PGD adversarial training, whose
  adversary has sharedness 1. `config.sat.softplus_grad` smooths ReLU's
  backward pass for the attacker, the weights or both (`sat`, Xie thesis
  table 5.1).
- `shared_at`: the same objective with a heap adversary of sharedness
  `config.sharedness` (one perturbation per heap of s examples).
- `advprop` (in `advprop`): AdvProp and the mixture-BN strategies (Xie
  thesis, chs. 7 and 6), with auxiliary BatchNorm sets and a step of its own.

Batches are dicts with `image` [batch, height, width, channels] in [0, 1] and
`label` [batch] (or dense [batch, height, width]).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from advjax import attacks
from advjax.attacks import heap, losses, pgd
from advjax.training import sat

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


def apply_train(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array,
                rng: jax.Array) -> tuple[jax.Array, Any]:
  """A training-mode forward pass: batch statistics used and updated, dropout on.

  Returns:
    logits [batch, ..., classes] and the updated batch statistics.
  """
  logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      mutable=["batch_stats"], rngs={"dropout": rng})
  return logits, updates.get("batch_stats", batch_stats)


def make_erm_loss(model: nn.Module, config: ml_collections.ConfigDict) -> LossFn:
  """Mean label-smoothed cross-entropy on the clean batch."""

  def loss_fn(params, batch_stats, batch, rng):
    logits, batch_stats = apply_train(model, params, batch_stats, batch["image"], rng)
    loss = jnp.mean(losses.cross_entropy(logits, batch["label"], config.label_smoothing))
    metrics = {"accuracy": jnp.mean(losses.correct(logits, batch["label"]))}
    return loss, (batch_stats, metrics)

  return loss_fn


def make_adversarial_loss(model: nn.Module, config: ml_collections.ConfigDict, sharedness: int) -> LossFn:
  """sigma * L(x_adv) + (1 - sigma) * L(x), x_adv from a heap adversary of sharedness s.

  With s = 1 the adversary is per-example PGD (Madry et al.); with s > 1 one
  perturbation is shared by each heap of s consecutive examples of a device's
  batch (shared adversarial training, section 4). The adversary sees the
  current weights but no gradient flows through it (Danskin's theorem: the
  gradient of the max is the gradient at the argmax). The clean and
  adversarial examples go through the model in separate training passes, so
  each is normalised with its own batch statistics; with sigma = 1 the clean
  pass is skipped entirely.
  """
  attack_cfg = pgd.AttackConfig.from_config(config.attack)
  sigma = float(config.adv_weight)
  # ReLU's backward pass may be smoothed for either side (SAT diagnostic, table 5.1).
  attack_model, model = sat.attacker_and_trainee(model, config)

  def adversary(logits_fn, x, y, rng):
    if sharedness == 1:
      return pgd.attack(logits_fn, x, y, rng, attack_cfg)
    return heap.heap_attack(logits_fn, x, y, rng, attack_cfg, sharedness)

  def loss_fn(params, batch_stats, batch, rng):
    attack_rng, adv_rng, clean_rng = jax.random.split(rng, 3)
    frozen = jax.lax.stop_gradient({"params": params, "batch_stats": batch_stats})
    logits_fn = attacks.make_logits_fn(attack_model, frozen, attack_cfg.bn_mode)
    x_adv = jax.lax.stop_gradient(adversary(logits_fn, batch["image"], batch["label"], attack_rng))
    adv_logits, batch_stats = apply_train(model, params, batch_stats, x_adv, adv_rng)
    loss = sigma * jnp.mean(losses.cross_entropy(adv_logits, batch["label"], config.label_smoothing))
    metrics = {"adv_accuracy": jnp.mean(losses.correct(adv_logits, batch["label"]))}
    if sigma < 1.0:
      clean_logits, batch_stats = apply_train(model, params, batch_stats, batch["image"], clean_rng)
      loss += (1.0 - sigma) * jnp.mean(losses.cross_entropy(clean_logits, batch["label"], config.label_smoothing))
      metrics["accuracy"] = jnp.mean(losses.correct(clean_logits, batch["label"]))
    return loss, (batch_stats, metrics)

  return loss_fn


def make_pgd_at_loss(model: nn.Module, config: ml_collections.ConfigDict) -> LossFn:
  """PGD adversarial training: the adversarial objective with sharedness 1."""
  return make_adversarial_loss(model, config, sharedness=1)


def make_shared_at_loss(model: nn.Module, config: ml_collections.ConfigDict) -> LossFn:
  """Shared adversarial training: sigma * rho_heap(s) + (1 - sigma) * rho_exp, s = config.sharedness."""
  return make_adversarial_loss(model, config, sharedness=config.sharedness)


OBJECTIVES: dict[str, Callable[[nn.Module, ml_collections.ConfigDict], LossFn]] = {
    "erm": make_erm_loss,
    "pgd_at": make_pgd_at_loss,
    "shared_at": make_shared_at_loss,
}


# Objectives that keep leaves of their own in `TrainState.extras` (such as a
# universal perturbation) register a function `(config, image_shape) -> extras`.
EXTRAS: dict[str, Callable[[ml_collections.ConfigDict, tuple[int, ...]], dict]] = {}


def make_loss_fn(model: nn.Module, config: ml_collections.ConfigDict) -> LossFn:
  """The loss function of `config.objective`."""
  return OBJECTIVES[config.objective](model, config)


def init_extras(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> dict:
  """The initial `TrainState.extras` of `config.objective` ({} for most objectives)."""
  init = EXTRAS.get(config.objective)
  return {} if init is None else init(config, image_shape)
