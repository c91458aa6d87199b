"""AdvProp and the mixture-BN strategies: adversarial examples through their own BatchNorms.

AdvProp (Xie thesis, ch. 7, algorithm 2) treats clean images and adversarial
examples as two domains that share every weight except the BatchNorms:

  1. attack the network *through the auxiliary BNs* (their batch statistics
     by default, `attack.bn_mode`; nothing updated) to turn the clean
     mini-batch x^c into x^a;
  2. L^c = CE(x^c) through the main BNs, L^a = CE(x^a) through the auxiliary
     BNs, each pass updating only its own running statistics;
  3. one update of all weights on L^c + L^a (eq. 7.3).

The objective `advprop` also covers the knobs of chapter 6 (sec. 6.4) with
`config.advprop`:

  adv_bn             the set of the adversarial examples: an auxiliary set name
                     (AdvProp, "MBN_adv") or 'main', the mixture BN where the
                     clean and adversarial images form one batch through the
                     main BNs ("100% adv + x% clean").
  clean_ratio        x: the first round(x * B) clean images are trained on
                     (fig. 6.1); 0 is Madry et al.'s adversarial-only training.
  logit_pairing      weight of adversarial logit pairing (ALP, sec. 6.4.1): the
                     mean squared L2 distance between the logits of each kept
                     clean image and of its adversarial counterpart.
  aug_bn             fine-grained AdvProp (sec. 7.5.4): a second auxiliary set
                     for augmented clean images `batch['image_aug']`; the
                     pipeline then gives 'image' un-augmented and 'image_aug'
                     under data.augment's transforms (the thesis uses
                     AutoAugment, which advjax does not implement).
  running_stats_last_epochs
                     table 6.2: the last N epochs train with the running
                     statistics (BN behaves as at test time); the step switches
                     with `lax.cond` on the step counter, so one compiled step
                     serves the whole run.
  project_eps_ball   False gives the GD attacker of sec. 7.5.4: PGD without the
                     projection onto the eps ball (the image box still holds).

The loss is the sum of per-example cross-entropies over every image trained
on, divided by the clean batch size B: L^c + L^a for AdvProp (algorithm 2),
and proportional to the mean over the mixed batch (eq. 6.1, alpha = x/(1+x))
for the mixture BN. `advprop_attack` builds the attackers of sec. 7.5.1 from
eps: n = eps + 1 steps (1 for eps = 1) of size 1.

The auxiliary statistics live in `state.extras[AUX_BATCH_STATS]`, one entry
per collection ('batch_stats_adv', ...), so they are replicated, donated and
checkpointed with the state; `trainer.variables_of` puts them back beside
'batch_stats'. Their affine parameters (`scale_adv`, ...) are ordinary params.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from advjax import data
from advjax import config as config_lib
from advjax.attacks import losses, pgd, threat
from advjax.errors import ConfigError
from advjax.models import aux_bn
from advjax.training import objectives, sat, steps
from advjax.training.train_state import AUX_BATCH_STATS, TrainState

# Attackers of AdvProp's ablation (sec. 7.5.4, table 7.7).
ATTACKERS = ("pgd", "ifgsm", "gd")


def advprop_attack(eps: float, attacker: str = "pgd") -> pgd.AttackConfig:
  """The L-inf attacker of AdvProp at perturbation size `eps` (sec. 7.5.1).

  Args:
    eps: perturbation size in 0-255 units (1..4 in the thesis).
    attacker: 'pgd' (random start), 'ifgsm' (zero start) or 'gd' (random
      start; the caller also sets `advprop.project_eps_ball = False`).

  Returns:
    An AttackConfig with n = eps + 1 iterations (n = 1 for eps = 1) of step 1
    through the auxiliary set's batch statistics (bn_mode 'batch'); with
    'eval' the attack normalises with that set's running statistics.

  Raises:
    ConfigError: unknown attacker or eps < 1.
  """
  if attacker not in ATTACKERS:
    raise ConfigError(f"unknown AdvProp attacker {attacker!r}; known: {', '.join(ATTACKERS)}")
  if eps < 1:
    raise ConfigError(f"AdvProp eps {eps} must be >= 1 (0-255 units)")
  num_steps = 1 if eps == 1 else int(round(eps)) + 1
  return pgd.AttackConfig(norm="linf", eps=float(eps), step_size=1.0, num_steps=num_steps,
                          init="zero" if attacker == "ifgsm" else "uniform", bn_mode="batch")


def configure_attacker(config: ml_collections.ConfigDict, eps: float, attacker: str = "pgd") -> None:
  """Sets `config.attack` and `config.advprop.project_eps_ball` for an AdvProp attacker."""
  config.attack = config_lib.as_config_dict(advprop_attack(eps, attacker))
  config.advprop.project_eps_ball = attacker != "gd"


def unprojected_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                       rng: jax.Array, cfg: pgd.AttackConfig) -> jax.Array:
  """The GD attacker (sec. 7.5.4): `cfg`'s iterations without the eps-ball projection.

  Starts like `cfg` (e.g. uniform in the eps ball) and keeps x + delta in
  [0, 1], but lets delta leave the ball.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, height, width, channels] clean images in [0, 1].
    y: [batch] labels.
    rng: PRNG key.
    cfg: the attack config (step rule, size and count, start).

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1].
  """
  sizes = pgd.resolve_sizes(cfg)
  k_labels, k_init, k_steps = jax.random.split(rng, 3)
  labels = pgd.attack_labels(logits_fn, x, y, k_labels, cfg)
  loss_fn = pgd.attack_loss(cfg)

  def objective(delta, key):
    del key
    return jnp.sum(loss_fn(logits_fn(x + delta), labels))

  def project(delta):
    return threat.clip_to_box(x, delta)

  delta = project(pgd.init_perturbation(k_init, x.shape, cfg, sizes, x.dtype))
  delta = pgd.optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
  return threat.apply(x, delta)


def bn_sets(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The auxiliary BN sets `config` trains (none unless the objective is advprop)."""
  if config.objective != "advprop":
    return ()
  names = (config.advprop.adv_bn, config.advprop.aug_bn)
  return tuple(dict.fromkeys(n for n in names if n and n != aux_bn.MAIN))


def _apply(model: nn.Module, variables: dict, x: jax.Array, bn_set: str, use_batch_stats: bool,
           rng: jax.Array, *, train: bool = True) -> tuple[jax.Array, dict]:
  """A pass through set `bn_set`; returns logits and that set's (possibly updated) statistics."""
  col = aux_bn.collection(bn_set)
  logits, updates = aux_bn.with_bn_set(model, bn_set).apply(
      variables, x, train=train, use_batch_stats=use_batch_stats, mutable=[col], rngs={"dropout": rng})
  return logits, updates.get(col, variables[col])


def make_advprop_loss(model: nn.Module, config: ml_collections.ConfigDict) -> objectives.LossFn:
  """AdvProp's L^c + L^a (algorithm 2) with the chapter-6 knobs of `config.advprop`.

  Args:
    model: the classifier with its main norm ('batchnorm[:momentum]' for
      auxiliary sets; any norm for the mixture strategy adv_bn='main').
    config: the experiment config.

  Returns:
    `loss_fn(params, batch_stats, batch, rng, use_batch_stats=True) ->
    (loss, (batch_stats, metrics))`, where `batch_stats` maps collection
    names ('batch_stats', 'batch_stats_adv', ...) to statistics and
    `use_batch_stats` (static) is False in the running-statistics phase.
  """
  cfg = config.advprop
  attack_cfg = pgd.AttackConfig.from_config(config.attack)
  adv_set, aug_set = cfg.adv_bn, cfg.aug_bn
  attack_model, model = sat.attacker_and_trainee(model, config)
  smoothing = config.label_smoothing
  attack_batch_stats = attack_cfg.bn_mode == "batch"
  for bn_set in bn_sets(config):
    aux_bn.aux_norm(model.norm, bn_set)  # Fails early, naming the norm, for a non-BatchNorm model.

  def ce_sum(logits, labels):
    return jnp.sum(losses.cross_entropy(logits, labels, smoothing))

  def loss_fn(params, batch_stats, batch, rng, use_batch_stats=True):
    x, y = batch["image"], batch["label"]
    size = x.shape[0]
    num_clean = int(round(cfg.clean_ratio * size))
    attack_rng, clean_rng, adv_rng, aug_rng = jax.random.split(rng, 4)
    variables = {"params": params, **batch_stats}
    frozen = jax.lax.stop_gradient(variables)

    def attack_logits(images):
      # The attacked network normalises with the adversarial set (its running statistics for
      # attack.bn_mode 'eval', the batch's for 'batch'); any statistics update is discarded.
      return _apply(attack_model, frozen, images, adv_set, attack_batch_stats and use_batch_stats,
                    attack_rng, train=False)[0]

    if cfg.project_eps_ball:
      x_adv = pgd.attack(attack_logits, x, y, attack_rng, attack_cfg)
    else:
      x_adv = unprojected_attack(attack_logits, x, y, attack_rng, attack_cfg)
    x_adv = jax.lax.stop_gradient(x_adv)

    new_stats = dict(batch_stats)
    clean_logits = None
    if adv_set == aux_bn.MAIN and num_clean:
      # Mixture BN: one batch, one set of statistics for both domains.
      both, new_stats["batch_stats"] = _apply(
          model, variables, jnp.concatenate([x[:num_clean], x_adv]), aux_bn.MAIN, use_batch_stats, adv_rng)
      clean_logits, adv_logits = both[:num_clean], both[num_clean:]
    else:
      adv_logits, new_stats[aux_bn.collection(adv_set)] = _apply(
          model, variables, x_adv, adv_set, use_batch_stats, adv_rng)
      if num_clean:
        clean_logits, new_stats["batch_stats"] = _apply(
            model, variables, x[:num_clean], aux_bn.MAIN, use_batch_stats, clean_rng)
    total = ce_sum(adv_logits, y)
    metrics = {"adv_accuracy": jnp.mean(losses.correct(adv_logits, y))}
    if clean_logits is not None:
      total += ce_sum(clean_logits, y[:num_clean])
      metrics["accuracy"] = jnp.mean(losses.correct(clean_logits, y[:num_clean]))
    if aug_set:
      aug_logits, new_stats[aux_bn.collection(aug_set)] = _apply(
          model, variables, batch["image_aug"], aug_set, use_batch_stats, aug_rng)
      total += ce_sum(aug_logits, y)
    loss = total / size
    if cfg.logit_pairing:
      pairing = jnp.mean(jnp.sum(jnp.square(clean_logits - adv_logits[:num_clean]), axis=-1))
      loss += cfg.logit_pairing * pairing
      metrics["logit_pairing"] = pairing
    return loss, (new_stats, metrics)

  return loss_fn


def running_stats_start(config: ml_collections.ConfigDict) -> int | None:
  """The first step trained with running statistics (table 6.2), or None if never."""
  last = config.advprop.running_stats_last_epochs
  if not last:
    return None
  steps_per_epoch = data.get_info(config.data).num_train // config.batch_size
  total = config_lib.resolve_steps(config, steps_per_epoch)
  return max(0, total - int(round(last * steps_per_epoch)))


def make_advprop_step(model: nn.Module, config: ml_collections.ConfigDict,
                      schedule: optax.Schedule) -> steps.TrainStep:
  """The AdvProp train step: one update of all weights; each BN set keeps its own statistics.

  Args:
    model: the classifier (main BN set).
    config: the experiment config.
    schedule: the learning-rate schedule, logged as a metric.

  Returns:
    A pure `train_step(state, batch) -> (new_state, metrics)`.
  """
  loss_fn = make_advprop_loss(model, config)
  start = running_stats_start(config)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    stats = {"batch_stats": state.batch_stats, **state.extras[AUX_BATCH_STATS]}

    def grads(use_batch_stats):
      fn = functools.partial(loss_fn, use_batch_stats=use_batch_stats)
      return jax.value_and_grad(fn, has_aux=True)(state.params, stats, batch, rng)

    if start is None:
      (loss, (stats, metrics)), g = grads(True)
    else:
      (loss, (stats, metrics)), g = jax.lax.cond(
          state.step >= start, lambda: grads(False), lambda: grads(True))
    main = stats.pop("batch_stats")
    new_state = state.apply_gradients(grads=g, batch_stats=main,
                                      extras={**state.extras, AUX_BATCH_STATS: stats})
    metrics = {"loss": loss, **metrics, "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
    return new_state, metrics

  return train_step


objectives.OBJECTIVES["advprop"] = make_advprop_loss
steps.CUSTOM_STEPS["advprop"] = make_advprop_step
