"""Universal adversarial training: min over weights, max over one shared perturbation.

Shafahi et al., "Universal adversarial training" (AAAI 2020), section 4, train
against a single image-agnostic perturbation delta by solving eq. 4,

  min_w max_{||delta||_inf <= eps} (1/N) sum_i l(w, clip(x_i + delta, 0, 1)),

with stochastic gradients and no inner attack loop: delta persists across
steps, so one ascent step per mini-batch accumulates into a universal
perturbation while the weights learn to resist it.

Two train steps, registered as objectives:

- `uat_alternating` (algorithm 3): descend w on the mini-batch perturbed by
  delta, then, with the new weights, take one ascent step on delta on the
  same mini-batch. Two backward passes per step.
- `uat_simultaneous` (algorithm 4, "low-cost"): one forward and one backward
  pass give both the weight gradient and the delta gradient of the same loss
  at the old (w, delta), and both are updated. The cost of natural training.

Ascent rules for delta (`config.uat.delta_rule`): 'fgsm', eq. 6,
delta += eps * sign(g); 'sgd', eq. 7, delta += tau * g; 'adam', Adam ascent
with learning rate tau. After each step delta is projected onto the L-inf
eps ball. Both players use the training loss l (cross-entropy with the
config's label smoothing); the weights descend it as is, and delta ascends
the clipped loss min(l, beta) of eq. 3 when `config.uat.clip_beta` > 0
(the paper introduces the clipping for its universal attack, algorithm 2;
algorithms 3-4 write the plain loss, which is clip_beta = 0).

delta [height, width, channels] lives in `TrainState.extras['delta']`, with
the Adam state of the 'adam' rule in `extras['delta_opt_state']`. The step
jits with the whole state replicated and the batch split over devices, so the
delta gradient, a mean over the global batch, is an all-reduce that jit
inserts; every device then applies the same update to the same delta, and it
is checkpointed with the rest of the state.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from advjax.attacks import losses, threat
from advjax.config import UAT_DELTA_RULES
from advjax.errors import ConfigError
from advjax.training import objectives, steps
from advjax.training.train_state import TrainState

DELTA = "delta"
DELTA_OPT_STATE = "delta_opt_state"


@dataclasses.dataclass(frozen=True)
class UATConfig:
  """The delta player's hyper-parameters on the [0, 1] image scale.

  Attributes:
    delta_rule: one of `UAT_DELTA_RULES`.
    eps: L-inf radius of delta.
    step_size: tau of the 'sgd' and 'adam' rules.
    clip_beta: beta of eq. 3 for the delta objective; 0 for no clipping.
  """
  delta_rule: str
  eps: float
  step_size: float
  clip_beta: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "UATConfig":
    """Reads `config.uat` (0-255 units) and converts the sizes once."""
    cfg = config.uat
    if cfg.delta_rule not in UAT_DELTA_RULES:
      raise ConfigError(f"config.uat.delta_rule: unknown rule {cfg.delta_rule!r}; "
                        f"known: {', '.join(UAT_DELTA_RULES)}")
    return cls(delta_rule=cfg.delta_rule, eps=threat.to_unit(float(cfg.eps)),
               step_size=threat.to_unit(float(cfg.step_size)), clip_beta=float(cfg.clip_beta))


def delta_optimizer(cfg: UATConfig) -> optax.GradientTransformation:
  """The Adam of the 'adam' rule, a descent optimiser fed the negated gradient."""
  return optax.adam(cfg.step_size)


def init_extras(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> dict:
  """The initial extras: delta = 0 and, for the 'adam' rule, Adam's state.

  Args:
    config: the experiment config.
    image_shape: (height, width, channels).

  Returns:
    {'delta': [height, width, channels] float32 zeros} plus
    'delta_opt_state' when `config.uat.delta_rule` is 'adam'.
  """
  cfg = UATConfig.from_config(config)
  delta = jnp.zeros(image_shape, jnp.float32)
  extras = {DELTA: delta}
  if cfg.delta_rule == "adam":
    extras[DELTA_OPT_STATE] = delta_optimizer(cfg).init(delta)
  return extras


def ascend(extras: dict, grad: jax.Array, cfg: UATConfig) -> dict:
  """One ascent step on delta followed by the projection onto the eps ball.

  Args:
    extras: {'delta': [H, W, C], optionally 'delta_opt_state'}.
    grad: [H, W, C] gradient of the delta objective, a mean over the batch.
    cfg: the delta player's config.

  Returns:
    The updated extras, same structure.
  """
  delta = extras[DELTA]
  new = dict(extras)
  if cfg.delta_rule == "fgsm":
    delta = delta + cfg.eps * jnp.sign(grad)
  elif cfg.delta_rule == "sgd":
    delta = delta + cfg.step_size * grad
  else:
    # optax descends; negating the gradient makes it ascend the delta objective.
    updates, new[DELTA_OPT_STATE] = delta_optimizer(cfg).update(-grad, extras[DELTA_OPT_STATE], delta)
    delta = optax.apply_updates(delta, updates)
  # project() takes a leading perturbation axis; delta is a single one.
  new[DELTA] = threat.project(delta[None], "linf", cfg.eps)[0]
  return new


def delta_objective(per_example_ce: jax.Array, clip_beta: float) -> jax.Array:
  """Per-example loss delta ascends: min(CE, beta) (eq. 3), or CE when beta is 0."""
  if clip_beta > 0:
    return jnp.minimum(per_example_ce, clip_beta)
  return per_example_ce


def _metrics(loss, logits, labels, delta_loss, delta, lr) -> dict:
  return {
      "loss": loss,
      "accuracy": jnp.mean(losses.correct(logits, labels)),
      "delta_loss": delta_loss,
      # The one conversion back to 0-255 units, for logging.
      "delta_linf": jnp.max(jnp.abs(delta)) / threat.to_unit(1.0),
      "learning_rate": lr,
  }


def make_alternating_step(model: nn.Module, config: ml_collections.ConfigDict,
                          schedule: optax.Schedule) -> steps.TrainStep:
  """Algorithm 3: a weight step on x + delta, then an ascent step on delta.

  Both steps use the same mini-batch, and the ascent sees the updated weights
  and batch statistics, as in the paper's order. The ascent's forward pass
  runs the model in training mode (batch statistics, dropout) like the weight
  step, so delta attacks the network as it is trained; its batch-statistics
  update is discarded so the running averages move once per step.

  Args:
    model: the classifier, x in [0, 1].
    config: the experiment config (`config.uat`, `config.label_smoothing`).
    schedule: the weights' learning-rate schedule, logged.

  Returns:
    `train_step(state, batch) -> (state, metrics)` with batch
    {'image': [batch, H, W, C] in [0, 1], 'label': [batch]}; metrics are
    loss and accuracy of the weight step on x + delta, the delta objective
    before the ascent, delta's L-inf norm in 0-255 units and the learning rate.
  """
  cfg = UATConfig.from_config(config)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    weight_rng, delta_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x, y = batch["image"], batch["label"]
    delta = state.extras[DELTA]
    lr = jnp.asarray(schedule(state.step), jnp.float32)

    def weight_loss(params):
      logits, batch_stats = objectives.apply_train(
          model, params, state.batch_stats, threat.apply(x, delta), weight_rng)
      return jnp.mean(losses.cross_entropy(logits, y, config.label_smoothing)), (batch_stats, logits)

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(weight_loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

    def delta_loss(delta):
      logits, _ = objectives.apply_train(
          model, state.params, state.batch_stats, threat.apply(x, delta), delta_rng)
      per_example = losses.cross_entropy(logits, y, config.label_smoothing)
      return jnp.mean(delta_objective(per_example, cfg.clip_beta))

    d_loss, d_grad = jax.value_and_grad(delta_loss)(delta)
    extras = ascend(state.extras, d_grad, cfg)
    return state.replace(extras=extras), _metrics(loss, logits, y, d_loss, delta, lr)

  return train_step


def make_simultaneous_step(model: nn.Module, config: ml_collections.ConfigDict,
                           schedule: optax.Schedule) -> steps.TrainStep:
  """Algorithm 4: one backward pass yields the weight and the delta gradients.

  delta is broadcast to one copy per example before it is added, and the loss
  is differentiated with respect to (params, copies) in a single VJP. The
  copies' gradients summed over the batch are exactly the gradient with
  respect to the shared delta; keeping them apart first lets the clipped
  objective of eq. 3 drop the examples whose loss exceeds beta without a
  second backward pass. With batch-normalised training the loss of one
  example also depends on the others' inputs through the batch statistics,
  so with clip_beta > 0 that masking is exact only up to this cross-example
  term; with clip_beta = 0 (algorithm 4 as written) there is no approximation.

  Args:
    model: the classifier, x in [0, 1].
    config: the experiment config (`config.uat`, `config.label_smoothing`).
    schedule: the weights' learning-rate schedule, logged.

  Returns:
    `train_step(state, batch) -> (state, metrics)`, metrics as in
    `make_alternating_step` (the delta objective at the old weights).
  """
  cfg = UATConfig.from_config(config)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    x, y = batch["image"], batch["label"]
    delta = state.extras[DELTA]

    def loss_fn(params, copies):
      logits, batch_stats = objectives.apply_train(model, params, state.batch_stats, threat.apply(x, copies), rng)
      per_example = losses.cross_entropy(logits, y, config.label_smoothing)
      return jnp.mean(per_example), (batch_stats, logits, per_example)

    copies = jnp.broadcast_to(delta, x.shape)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (batch_stats, logits, per_example)), (grads, copy_grads) = grad_fn(state.params, copies)
    # Each copy's gradient already carries the 1/batch of the mean; masking
    # the examples past beta and summing gives the gradient of the clipped mean.
    if cfg.clip_beta > 0:
      keep = (per_example < cfg.clip_beta).astype(copy_grads.dtype)
      copy_grads = copy_grads * keep.reshape((-1,) + (1,) * (x.ndim - 1))
    d_grad = jnp.sum(copy_grads, axis=0)
    d_loss = jnp.mean(delta_objective(per_example, cfg.clip_beta))
    lr = jnp.asarray(schedule(state.step), jnp.float32)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    state = state.replace(extras=ascend(state.extras, d_grad, cfg))
    return state, _metrics(loss, logits, y, d_loss, delta, lr)

  return train_step


steps.CUSTOM_STEPS["uat_alternating"] = make_alternating_step
steps.CUSTOM_STEPS["uat_simultaneous"] = make_simultaneous_step
objectives.EXTRAS["uat_alternating"] = init_extras
objectives.EXTRAS["uat_simultaneous"] = init_extras
