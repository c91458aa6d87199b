"""AdvProp and the mixture-BN strategies: adversarial examples through their own BatchNorms.

AdvProp (Xie thesis, ch. 7, algorithm 2) treats clean images and adversarial
examples as two domains that share every weight except the BatchNorms:

  1. attack the network *through the auxiliary BNs* (their batch statistics
     with `advprop.bn_mode = 'batch'`, as `configure_attacker` sets it, or
     their running ones with 'eval'; nothing updated) to turn the clean
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

The auxiliary statistics are collections of the model state beside
'batch_stats' ('batch_stats_adv', ...), so they are replicated, donated and
checkpointed with the train state; their affine parameters (`scale_adv`, ...)
are ordinary params. Evaluation normalises with `advprop.eval_bn`.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from advjax import tasks
from advjax.attacks import pgd, threat
from advjax.errors import ConfigError
from advjax.models import aux_bn
from advjax.training import sat as sat_lib
from advjax.training.objectives import adversarial, base
from advjax.training.train_state import TrainState

# Attackers of AdvProp's ablation (sec. 7.5.4, table 7.7).
ATTACKERS = ("pgd", "ifgsm", "gd")


@dataclasses.dataclass(frozen=True)
class AdvPropConfig(adversarial.AdversaryConfig):
  """`config.advprop` (Xie thesis chs. 6-7): the adversary (`attack`, `bn_mode`, `sat`) and these.

  Attributes:
    adv_bn: BN set of the adversarial examples: an auxiliary set name
      (AdvProp, MBN_adv), or 'main' for the mixture BN (clean and adversarial
      images in one batch).
    aug_bn: auxiliary BN set of augmented clean images batch['image_aug']
      (fine-grained AdvProp, 7.5.4; needs data.augment, and then
      batch['image'] is the un-augmented view); '' none.
    clean_ratio: x of "100% adv + x% clean": fraction of each clean batch
      trained on (fig. 6.1).
    logit_pairing: weight of adversarial logit pairing (ALP, sec. 6.4.1); 0 disables.
    project_eps_ball: False gives the unprojected GD attacker of sec. 7.5.4.
    running_stats_last_epochs: train with running BN statistics for the last
      N epochs (table 6.2).
    eval_bn: BN set used for evaluation: 'main' or a trained auxiliary set
      (tables 6.1, 7.3).
  """
  adv_bn: str = "adv"
  aug_bn: str = ""
  clean_ratio: float = 1.0
  logit_pairing: float = 0.0
  project_eps_ball: bool = True
  running_stats_last_epochs: float = 0.0
  eval_bn: str = "main"

  def __post_init__(self):
    super().__post_init__()

    def require(ok, field, why):
      if not ok:
        raise ConfigError(f"{field}={getattr(self, field)!r}: {why}")

    require(bool(self.adv_bn) and (self.adv_bn == aux_bn.MAIN or self.adv_bn.isidentifier()), "adv_bn",
            "must be 'main' or an identifier naming an auxiliary BN set")
    require(self.aug_bn == "" or (self.aug_bn.isidentifier() and self.aug_bn not in (aux_bn.MAIN, self.adv_bn)),
            "aug_bn", "must be '' or an auxiliary set name other than 'main' and adv_bn")
    require(0.0 <= self.clean_ratio <= 1.0, "clean_ratio", "must be in [0, 1]")
    require(0 <= self.logit_pairing < float("inf"), "logit_pairing", "must be finite and non-negative")
    require(self.logit_pairing == 0 or self.clean_ratio > 0, "logit_pairing",
            "pairs clean and adversarial logits, so clean_ratio must be positive")
    require(0 <= self.running_stats_last_epochs < float("inf"), "running_stats_last_epochs",
            "must be finite and non-negative")
    trained = (aux_bn.MAIN, self.adv_bn, self.aug_bn)
    require(self.eval_bn in trained, "eval_bn",
            f"is not a trained BN set; known: {', '.join(repr(t) for t in trained if t)}")

  def bn_sets(self) -> tuple[str, ...]:
    """The auxiliary BN sets this block trains."""
    return tuple(dict.fromkeys(n for n in (self.adv_bn, self.aug_bn) if n and n != aux_bn.MAIN))


def advprop_attack(eps: float, attacker: str = "pgd") -> pgd.AttackConfig:
  """The L-inf attacker of AdvProp at perturbation size `eps` (sec. 7.5.1).

  Args:
    eps: perturbation size in 0-255 units (1..4 in the thesis).
    attacker: 'pgd' (random start), 'ifgsm' (zero start) or 'gd' (random
      start; the caller also sets `advprop.project_eps_ball = False`).

  Returns:
    An AttackConfig with n = eps + 1 iterations (n = 1 for eps = 1) of step 1.

  Raises:
    ConfigError: unknown attacker or eps < 1.
  """
  if attacker not in ATTACKERS:
    raise ConfigError(f"unknown AdvProp attacker {attacker!r}; known: {', '.join(ATTACKERS)}")
  if eps < 1:
    raise ConfigError(f"AdvProp eps {eps} must be >= 1 (0-255 units)")
  num_steps = 1 if eps == 1 else int(round(eps)) + 1
  return pgd.AttackConfig(norm="linf", eps=float(eps), step_size=1.0, num_steps=num_steps,
                          init="zero" if attacker == "ifgsm" else "uniform")


def configure_attacker(config: ml_collections.ConfigDict, eps: float, attacker: str = "pgd") -> None:
  """Sets the section-7.5.1 attacker in `config.advprop`: `attack`, `bn_mode` and `project_eps_ball`.

  The attack normalises with the auxiliary set's batch statistics ('batch');
  set `config.advprop.bn_mode = 'eval'` afterwards for its running statistics.
  """
  for field, value in dataclasses.asdict(advprop_attack(eps, attacker)).items():
    config.advprop.attack[field] = value
  config.advprop.bn_mode = "batch"
  config.advprop.project_eps_ball = attacker != "gd"


def unprojected_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                       rng: jax.Array, cfg: pgd.AttackConfig, task=None) -> jax.Array:
  """The GD attacker (sec. 7.5.4): `cfg`'s iterations without the eps-ball projection.

  Starts like `cfg` (e.g. uniform in the eps ball) and keeps x + delta in
  [0, 1], but lets delta leave the ball.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, height, width, channels] clean images in [0, 1].
    y: [batch] labels (or label maps).
    rng: PRNG key.
    cfg: the attack config (step rule, size and count, start).
    task: scores the labels; default `advjax.tasks.for_labels(y)`.

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1].
  """
  task = tasks.for_labels(y) if task is None else task
  sizes = pgd.resolve_sizes(cfg)
  k_labels, k_init, k_steps = jax.random.split(rng, 3)
  labels = pgd.attack_labels(logits_fn, x, y, k_labels, cfg, task)
  loss_fn = cfg.loss_fn()

  def objective(delta, key):
    del key
    return jnp.sum(loss_fn(logits_fn(x + delta), labels))

  def project(delta):
    return threat.clip_to_box(x, delta)

  ball = pgd.threat_model(cfg, sizes)
  delta = project(ball.init(k_init, x.shape, cfg.init, cfg.clean_init_fraction, x.dtype))
  delta = pgd.optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
  return threat.apply(x, delta)


def _apply(model: nn.Module, variables: dict, x: jax.Array, bn_set: str, use_batch_stats: bool,
           rng: jax.Array, *, train: bool = True) -> tuple[jax.Array, dict]:
  """A pass through set `bn_set`; returns logits and that set's (possibly updated) statistics."""
  col = aux_bn.collection(bn_set)
  logits, updates = aux_bn.with_bn_set(model, bn_set).apply(
      variables, x, train=train, use_batch_stats=use_batch_stats, mutable=[col], rngs={"dropout": rng})
  return logits, updates.get(col, variables[col])


class AdvProp(base.Objective):
  """`advprop`: L^c + L^a with auxiliary BNs (algorithm 2) and the chapter-6 knobs of `config.advprop`."""

  BLOCK = "advprop"
  Config = AdvPropConfig

  @classmethod
  def views(cls, block: AdvPropConfig) -> tuple[str, ...]:
    return ("image_aug",) if block.aug_bn else ()

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict, num_devices: int) -> None:
    del num_devices
    a = config.advprop
    if a.aug_bn and not config.data.augment:
      raise ConfigError("config.advprop.aug_bn: trains on the augmented view of each image, so data.augment "
                        "must be True")
    for bn_set in dict.fromkeys(n for n in (a.adv_bn, a.aug_bn) if n and n != aux_bn.MAIN):
      try:  # Fails early, naming the norm, for a non-BatchNorm model.
        aux_bn.aux_norm(config.model.norm, bn_set)
      except ConfigError as e:
        raise ConfigError(f"config.advprop.adv_bn: {e}") from None
    sat_lib.check_activation(sat_lib.SATConfig(**a.sat), config.model.activation, "advprop.sat")

  def __init__(self, ctx: base.ObjectiveContext):
    super().__init__(ctx)
    self.attack_cfg = self.block.attack
    self.attack_model, self.train_model = sat_lib.attacker_and_trainee(self.model, self.block.sat)
    last = self.block.running_stats_last_epochs
    # The first step trained with running statistics (table 6.2), or None if never.
    self.running_stats_start = (None if not last else
                                max(0, ctx.total_steps - int(round(last * ctx.steps_per_epoch))))

  def bn_sets(self) -> tuple[str, ...]:
    return self.block.bn_sets()

  def eval_model(self) -> nn.Module:
    return aux_bn.with_bn_set(self.model, self.block.eval_bn)

  def loss(self, params, model_state, batch, rng, use_batch_stats=True):
    """(L^c + L^a) / B with the chapter-6 knobs; `use_batch_stats` (static) is False in the running-statistics phase.

    Returns:
      (loss, (model_state with every trained set's statistics, metrics)).
    """
    cfg = self.block
    adv_set, aug_set = cfg.adv_bn, cfg.aug_bn
    smoothing = self.ctx.loss.label_smoothing
    attack_batch_stats = cfg.bn_mode == "batch"
    x, y = batch["image"], batch["label"]
    size = x.shape[0]
    num_clean = int(round(cfg.clean_ratio * size))
    attack_rng, clean_rng, adv_rng, aug_rng = jax.random.split(rng, 4)
    variables = {"params": params, **model_state}
    frozen = jax.lax.stop_gradient(variables)

    def ce_sum(logits, labels):
      return jnp.sum(self.task.loss(logits, labels, smoothing))

    def attack_logits(images):
      # The attacked network normalises with the adversarial set (its running statistics for
      # bn_mode 'eval', the batch's for 'batch'); any statistics update is discarded.
      return _apply(self.attack_model, frozen, images, adv_set, attack_batch_stats and use_batch_stats,
                    attack_rng, train=False)[0]

    if cfg.project_eps_ball:
      x_adv = pgd.attack(attack_logits, x, y, attack_rng, self.attack_cfg, task=self.task)
    else:
      x_adv = unprojected_attack(attack_logits, x, y, attack_rng, self.attack_cfg, self.task)
    x_adv = jax.lax.stop_gradient(x_adv)

    new_state = dict(model_state)
    clean_logits = None
    model = self.train_model
    if adv_set == aux_bn.MAIN and num_clean:
      # Mixture BN: one batch, one set of statistics for both domains.
      both, new_state["batch_stats"] = _apply(
          model, variables, jnp.concatenate([x[:num_clean], x_adv]), aux_bn.MAIN, use_batch_stats, adv_rng)
      clean_logits, adv_logits = both[:num_clean], both[num_clean:]
    else:
      adv_logits, new_state[aux_bn.collection(adv_set)] = _apply(
          model, variables, x_adv, adv_set, use_batch_stats, adv_rng)
      if num_clean:
        clean_logits, new_state["batch_stats"] = _apply(
            model, variables, x[:num_clean], aux_bn.MAIN, use_batch_stats, clean_rng)
    total = ce_sum(adv_logits, y)
    metrics = {"adv_accuracy": jnp.mean(self.task.correct(adv_logits, y))}
    if clean_logits is not None:
      total += ce_sum(clean_logits, y[:num_clean])
      metrics["accuracy"] = jnp.mean(self.task.correct(clean_logits, y[:num_clean]))
    if aug_set:
      aug_logits, new_state[aux_bn.collection(aug_set)] = _apply(
          model, variables, batch["image_aug"], aug_set, use_batch_stats, aug_rng)
      total += ce_sum(aug_logits, y)
    loss = total / size
    if cfg.logit_pairing:
      pairing = jnp.mean(jnp.sum(jnp.square(clean_logits - adv_logits[:num_clean]), axis=-1))
      loss += cfg.logit_pairing * pairing
      metrics["logit_pairing"] = pairing
    return loss, (new_state, metrics)

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One update of all weights; each BN set keeps its own statistics."""
    rng = jax.random.fold_in(state.rng, state.step)

    def grads(use_batch_stats):
      fn = functools.partial(self.loss, use_batch_stats=use_batch_stats)
      return jax.value_and_grad(fn, has_aux=True)(state.params, state.model_state, batch, rng)

    if self.running_stats_start is None:
      (loss, (model_state, metrics)), g = grads(True)
    else:
      (loss, (model_state, metrics)), g = jax.lax.cond(
          state.step >= self.running_stats_start, lambda: grads(False), lambda: grads(True))
    new_state = state.apply_gradients(grads=g, model_state=model_state)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(g),
               "learning_rate": base.learning_rate(self.ctx.schedule, state.step)}
    return new_state, metrics
