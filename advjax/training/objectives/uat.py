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

Ascent rules for delta (`config.uat.step_rule`, advjax's one vocabulary of
`advjax.attacks.rules`): 'sign', eq. 6, delta += eps * sign(g) (the paper's
"FGSM" rule: its step is eps itself); 'sgd', eq. 7, delta += tau * g; 'adam',
Adam ascent with learning rate tau (and any other rule of `rules.RULES`, at
step tau). After each step delta is projected onto the L-inf eps ball. Both
players use the training loss l (cross-entropy with the config's label
smoothing); the weights descend it as is, and delta ascends the clipped loss
min(l, beta) of eq. 3 when `config.uat.clip_beta` > 0 (the paper introduces
the clipping for its universal attack, algorithm 2; algorithms 3-4 write the
plain loss, which is clip_beta = 0).

The update is the shared ascent step of the attacks (`advjax.attacks.core.ascend`
with the rule of `advjax.attacks.rules`: 'sign', 'sgd' or 'adam').

delta [height, width, channels] lives in `TrainState.extras['delta']`, with
its rule's state (Adam's moments; empty for the other rules) in
`extras['delta_opt_state']`. The step
jits with the whole state replicated and the batch split over devices, so the
delta gradient, a mean over the global batch, is an all-reduce that jit
inserts; every device then applies the same update to the same delta, and it
is checkpointed with the rest of the state.
"""

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from advjax.attacks import core, rules, threat
from advjax.errors import ConfigError
from advjax.training.objectives import base
from advjax.training.train_state import TrainState

DELTA = "delta"
DELTA_OPT_STATE = "delta_opt_state"


@dataclasses.dataclass(frozen=True)
class UATConfig:
  """`config.uat`: the delta player of universal adversarial training, sizes in 0-255 units.

  Attributes:
    step_rule: the ascent rule of delta (`rules.RULES`): 'sign' delta +=
      eps * sign(g) (eq. 6), 'sgd' delta += step_size * g (eq. 7), 'adam'
      Adam ascent at rate step_size, ...
    eps: L-inf radius of delta.
    step_size: tau of every rule but 'sign' (Adam moves a pixel by about this
      much per step; SGD scales the gradient on the [0, 1] image scale by it).
    clip_beta: beta of eq. 3: delta ascends the mean of min(CE, beta) so no
      single example dominates; 0 ascends the plain CE of algorithms 3-4.
      Weights always descend the plain CE.
  """
  step_rule: str = "sign"
  eps: float = 8.0
  step_size: float = 1.0
  clip_beta: float = 0.0

  RENAMED: ClassVar[dict[str, str]] = {"delta_rule": "step_rule"}

  def __post_init__(self):
    rules.check(self.step_rule)
    if not (math.isfinite(self.eps) and 0 < self.eps <= 255):
      raise ConfigError(f"eps={self.eps!r} must be in (0, 255]")
    if not (math.isfinite(self.step_size) and 0 <= self.step_size <= 255):
      raise ConfigError(f"step_size={self.step_size!r} must be in [0, 255]")
    if not (math.isfinite(self.clip_beta) and self.clip_beta >= 0):
      raise ConfigError(f"clip_beta={self.clip_beta!r} must be finite and non-negative (0 means no clipping)")

  def rule(self):
    """The ascent rule of delta."""
    return rules.get(self.step_rule)

  def ascent_step_size(self) -> float:
    """alpha of the update on the [0, 1] scale: eps for the sign rule (eq. 6), tau otherwise."""
    return threat.to_unit(self.eps if self.step_rule == "sign" else self.step_size)


def ascend(extras: dict, grad: jax.Array, cfg: UATConfig) -> dict:
  """One ascent step on delta followed by the projection onto the eps ball (`core.ascend`).

  Args:
    extras: {'delta': [H, W, C], 'delta_opt_state': the rule's state}.
    grad: [H, W, C] gradient of the delta objective, a mean over the batch.
    cfg: the delta player's config.

  Returns:
    The updated extras, same structure.
  """
  ball = threat.ThreatModel("linf", threat.to_unit(cfg.eps))
  delta, opt_state = core.ascend(extras[DELTA], grad, extras[DELTA_OPT_STATE], cfg.rule(),
                                 cfg.ascent_step_size(), lambda d: ball.project(d[None])[0])
  return {**extras, DELTA: delta, DELTA_OPT_STATE: opt_state}


def delta_objective(per_example_ce: jax.Array, clip_beta: float) -> jax.Array:
  """Per-example loss delta ascends: min(CE, beta) (eq. 3), or CE when beta is 0."""
  if clip_beta > 0:
    return jnp.minimum(per_example_ce, clip_beta)
  return per_example_ce


class _UniversalAdversarialTraining(base.Objective):
  """What both algorithms share: delta in the extras, its config, the logged metrics."""

  BLOCK = "uat"
  Config = UATConfig

  def __init__(self, ctx: base.ObjectiveContext):
    super().__init__(ctx)
    self.uat = self.block

  def init_extras(self, image_shape: tuple[int, ...]) -> dict:
    """delta = 0 [height, width, channels] float32, and its ascent rule's state."""
    delta = jnp.zeros(image_shape, jnp.float32)
    return {DELTA: delta, DELTA_OPT_STATE: self.uat.rule().init(delta)}

  def _metrics(self, loss, grads, logits, labels, delta_loss, delta, step) -> dict:
    return {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "accuracy": jnp.mean(self.task.correct(logits, labels)),
        "delta_loss": delta_loss,
        # The one conversion back to 0-255 units, for logging.
        "delta_linf": jnp.max(jnp.abs(delta)) / threat.to_unit(1.0),
        "learning_rate": base.learning_rate(self.ctx.schedule, step),
    }


class AlternatingUAT(_UniversalAdversarialTraining):
  """`uat_alternating`, algorithm 3: a weight step on x + delta, then an ascent step on delta.

  Both steps use the same mini-batch, and the ascent sees the updated weights
  and batch statistics, as in the paper's order. The ascent's forward pass
  runs the model in training mode (batch statistics, dropout) like the weight
  step, so delta attacks the network as it is trained; its batch-statistics
  update is discarded so the running averages move once per step. Metrics
  are the loss and accuracy of the weight step on x + delta, the delta
  objective before the ascent, delta's L-inf norm in 0-255 units and the
  learning rate.
  """

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    weight_rng, delta_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x, y = batch["image"], batch["label"]
    delta = state.extras[DELTA]
    smoothing = self.ctx.loss.label_smoothing

    def weight_loss(params):
      logits, model_state = base.apply_train(self.model, params, state.model_state, threat.apply(x, delta),
                                             weight_rng)
      return jnp.mean(self.task.loss(logits, y, smoothing)), (model_state, logits)

    (loss, (model_state, logits)), grads = jax.value_and_grad(weight_loss, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, model_state=model_state)

    def delta_loss(delta):
      logits, _ = base.apply_train(self.model, new_state.params, new_state.model_state, threat.apply(x, delta),
                                   delta_rng)
      return jnp.mean(delta_objective(self.task.loss(logits, y, smoothing), self.uat.clip_beta))

    d_loss, d_grad = jax.value_and_grad(delta_loss)(delta)
    new_state = new_state.replace(extras=ascend(new_state.extras, d_grad, self.uat))
    return new_state, self._metrics(loss, grads, logits, y, d_loss, delta, state.step)


class SimultaneousUAT(_UniversalAdversarialTraining):
  """`uat_simultaneous`, algorithm 4: one backward pass yields the weight and the delta gradients.

  delta is broadcast to one copy per example before it is added, and the loss
  is differentiated with respect to (params, copies) in a single VJP. The
  copies' gradients summed over the batch are exactly the gradient with
  respect to the shared delta; keeping them apart first lets the clipped
  objective of eq. 3 drop the examples whose loss exceeds beta without a
  second backward pass. With batch-normalised training the loss of one
  example also depends on the others' inputs through the batch statistics,
  so with clip_beta > 0 that masking is exact only up to this cross-example
  term; with clip_beta = 0 (algorithm 4 as written) there is no approximation.
  Metrics as in `AlternatingUAT` (the delta objective at the old weights).
  """

  def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    x, y = batch["image"], batch["label"]
    delta = state.extras[DELTA]

    def loss_fn(params, copies):
      logits, model_state = base.apply_train(self.model, params, state.model_state, threat.apply(x, copies), rng)
      per_example = self.task.loss(logits, y, self.ctx.loss.label_smoothing)
      return jnp.mean(per_example), (model_state, logits, per_example)

    copies = jnp.broadcast_to(delta, x.shape)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (model_state, logits, per_example)), (grads, copy_grads) = grad_fn(state.params, copies)
    # Each copy's gradient already carries the 1/batch of the mean; masking
    # the examples past beta and summing gives the gradient of the clipped mean.
    if self.uat.clip_beta > 0:
      keep = (per_example < self.uat.clip_beta).astype(copy_grads.dtype)
      copy_grads = copy_grads * keep.reshape((-1,) + (1,) * (x.ndim - 1))
    d_grad = jnp.sum(copy_grads, axis=0)
    d_loss = jnp.mean(delta_objective(per_example, self.uat.clip_beta))
    new_state = state.apply_gradients(grads=grads, model_state=model_state)
    new_state = new_state.replace(extras=ascend(new_state.extras, d_grad, self.uat))
    return new_state, self._metrics(loss, grads, logits, y, d_loss, delta, state.step)
