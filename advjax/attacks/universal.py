"""Universal perturbations: one stochastic projected-ascent loop, three papers' attacks.

A universal perturbation delta [H, W, C] is added to every input, x_adv =
clip(x + delta, 0, 1), and maximises the expected loss over the data,

  max_delta  E_(x, y) L_adv(x + delta, y)   s.t. ||delta||_p <= eps

(shared adversarial training, sec. 3, rho_uni, where it is called xi; UAT,
eq. 2). Every method here solves it by stochastic projected gradient ascent on
a stream of mini-batches. Iteration k draws `grad_batches` mini-batches
B_1..B_G, takes on each the gradient of the masked mean loss
g_j = grad_delta 1/|B_j| sum_i L_adv(x_i + delta, y_i), combines them, and
takes one step of the shared core (`advjax.attacks.core.ascend`),

  delta_{k+1} = P_eps(delta_k + alpha_k * rule(combine(g_1..g_G)))

with P_eps the projection onto the eps ball after every update. The papers
differ only in the knobs of `UniversalConfig`:

  shared adversarial training, sec. 5.2 (S-PGD, `shared_at_eval_config`):
    rule = sign, G = 1 (mini-batches of m_k = 16 examples), K = 200,
    annealed alpha_k = beta eps gamma^k / sum_{j<K} gamma^j with beta = 4 and
    gamma = 0.975, loss min(CE, kappa), kappa = -log 0.2 (sec. 4.3).
  Universal adversarial training, algorithm 2 (`uat_config`): rule = sign
    ("PGD", the paper's default), sgd, sgd_momentum or adam on the clipped loss
    min(l, beta) of eq. 3 (`kappa` here, so it does not collide with the
    schedule's beta); constant step size.
  Universality, robustness and detectability, appendix D (`appendix_d_config`):
    Xi_{n+1} = Clip_eps(Xi_n + alpha/K sum_{k=1..K} sgn(grad^{D_k}(Xi_n))), the
    average of the *signs* of the mean gradients of K = 10 mini-batches;
    `grad_batches` = K, eps = 10, alpha = 2.5, 200 iterations, plain CE.

`combine` is the mean of sign(g_j) for the sign rule (for G = 1 that is plain
sign ascent) and the mean of g_j for the stateful rules, which then feed SGD,
momentum SGD or Adam (`advjax.attacks.rules`). Step sizes are in 0-255 pixel
units like every advjax size, so an SGD step is alpha/255 times the raw gradient.

Labels are class indices or dense label maps (losses average over a map's
valid pixels). A targeted attack pushes every input toward one target: a
class (`UniversalConfig.target_class`, every valid label replaced by it) or,
passed as `target`, a label map [H, W] that every image is driven to (the
static target scene of the shared-AT paper's segmentation experiment, after
Metzen et al.); a target map's own -1 pixels are left out of the loss.

The parts:

  `init_universal`         delta_0 (zero, or uniform in the ball) and the rule's state
  `universal_step`         one jitted update (delta, opt_state, batch, k) -> (delta, opt_state)
  `universal_perturbation` the driver: streams any iterable of batches (cycled
                           if re-iterable), one compile for all K updates and all eps

Measuring a perturbation (accuracy, fooling ratio) and the eps_uni(delta)
search live in `advjax.evaluation.universal_robustness`.

Batches are dicts {'image': [B, H, W, C] in [0, 1], 'label': [B] or [B, H, W],
'mask': [B]}; the mask (optional, default all ones) removes padding from every
mean, so a ragged last batch can be padded to the common shape and nothing
recompiles. `logits_fn` is `x -> logits`, or a builder
`variables -> (x -> logits)` when `variables=` is given (then the variables
are traced and a new checkpoint does not recompile).
"""

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Iterable

import jax
import jax.numpy as jnp
from jax import lax

from advjax.cpu import compilation
from advjax.attacks import core, threat
from advjax.data import streams
from advjax.errors import ConfigError

INITS = ("zero", "uniform")


@dataclasses.dataclass(frozen=True)
class UniversalConfig(core.AscentConfig):
  """Hyper-parameters of a universal attack: `core.AscentConfig` with these defaults and fields.

  The shared fields mean what they mean for every adversary; here
  `num_steps` is the number of updates K (each consumes `grad_batches`
  batches), `init` is 'zero' (all three papers) or 'uniform' in the ball,
  `kappa` the cap of 'clipped_cross_entropy' (shared AT's kappa, UAT's beta),
  and the 'sign' rule is the L-inf one (S-PGD, the FGSM rule), taken per
  batch (see the module docstring).

  Attributes:
    target_class: the target class of a targeted universal attack without a
      target map (-1 when a map is given).
    grad_batches: mini-batches per update whose gradients are combined
      (appendix D averages their signs); 1 is plain stochastic ascent.
  """
  eps: float = 10.0
  step_size: float = 1.0
  num_steps: int = 200
  momentum: float = 0.9
  loss: str = "clipped_cross_entropy"
  target_class: int = -1
  grad_batches: int = 1

  def __post_init__(self):
    super().__post_init__()
    self.check(self.init in INITS, "init", f"must be one of {', '.join(INITS)}")
    self.check(self.step_rule != "sign" or self.norm == "linf", "step_rule",
               "'sign' is the linf steepest ascent; use sgd, sgd_momentum or adam with norm='l2'")
    self.check(self.target_class >= -1, "target_class", "must be a class >= 0, or -1 when a target map is given")
    self.check(isinstance(self.grad_batches, int) and self.grad_batches >= 1, "grad_batches",
               "must be an int >= 1")


def shared_at_eval_config(**overrides) -> UniversalConfig:
  """The S-PGD universal adversary of shared adversarial training's evaluation (sec. 5.2).

  K = 200 sign steps with the annealed schedule (beta = 4, gamma = 0.975) on
  the thresholded loss min(CE, -log 0.2); feed mini-batches of m_k = 16
  examples. eps is set by `eps_uni_search`.
  """
  return UniversalConfig(**{**dict(
      norm="linf", eps=255.0, num_steps=200, step_rule="sign", step_schedule="annealed",
      beta=4.0, gamma=0.975, loss="clipped_cross_entropy"), **overrides})


def uat_config(eps: float = 8.0, step_rule: str = "sign", step_size: float = 1.0,
               kappa: float = 9.0, **overrides) -> UniversalConfig:
  """Algorithm 2 of universal adversarial training (Shafahi et al.).

  Defaults: eps = 8 and step size 1 (fig. 2, CIFAR-10), the sign ("PGD") rule
  the paper uses unless stated otherwise, the clipped loss min(l, beta) with
  beta = 9 (fig. 5, Inception-V3). `num_steps` = epochs x batches per epoch.
  """
  return UniversalConfig(**{**dict(
      eps=eps, step_rule=step_rule, step_size=step_size, loss="clipped_cross_entropy",
      kappa=kappa), **overrides})


def appendix_d_config(**overrides) -> UniversalConfig:
  """Appendix D of 'universality, robustness and detectability': averaged sign gradients.

  eps = 10, alpha = 2.5, K = 10 mini-batches (of m = 128) per update, 200
  updates, cross-entropy on the true labels.
  """
  return UniversalConfig(**{**dict(
      norm="linf", eps=10.0, step_size=2.5, grad_batches=10, num_steps=200,
      step_rule="sign", loss="cross_entropy"), **overrides})


def _rule(cfg: UniversalConfig):
  """The ascent rule applied to the combined gradient (the sign is taken per batch, see `universal_step`)."""
  return (dataclasses.replace(cfg, step_rule="sgd") if cfg.step_rule == "sign" else cfg).rule()


def _eps_unit(cfg: UniversalConfig, eps):
  return threat.to_unit(jnp.asarray(cfg.eps if eps is None else eps, jnp.float32))


def batch_mask(batch: dict) -> jax.Array:
  """[B] float32 weights of a batch's rows: its 'mask' (1 real, 0 padding) or all ones."""
  if "mask" in batch:
    return batch["mask"].astype(jnp.float32)
  return jnp.ones(batch["label"].shape[:1], jnp.float32)


def attack_labels(labels: jax.Array, cfg: UniversalConfig, target: jax.Array | None = None) -> jax.Array:
  """The labels the universal loss uses: the true ones, or the target of a targeted attack.

  Args:
    labels: [B] or [B, H, W] true labels (-1 ignored).
    cfg: universal config.
    target: optional target label map [H, W] (or a class, shape []) that
      replaces every label map; without it `cfg.target_class` replaces every
      valid label.

  Returns:
    int32 labels shaped like `labels`.

  Raises:
    ConfigError: a targeted attack with neither a target nor a target class.
  """
  if not cfg.targeted:
    return labels
  if target is not None:
    return jnp.broadcast_to(jnp.asarray(target, jnp.int32), labels.shape)
  if cfg.target_class < 0:
    raise ConfigError("a targeted universal attack needs target_class >= 0 or a target map")
  return jnp.where(labels >= 0, cfg.target_class, labels).astype(jnp.int32)


def init_universal(rng: jax.Array, cfg: UniversalConfig, image_shape, eps=None,
                   dtype=jnp.float32) -> tuple[jax.Array, Any]:
  """delta_0 and the step rule's initial state.

  Args:
    rng: PRNG key (used by init='uniform').
    cfg: universal config.
    image_shape: (H, W, C) of one image.
    eps: optional override of `cfg.eps`, 0-255 units, possibly traced.
    dtype: float dtype of delta.

  Returns:
    (delta [H, W, C] inside the ball, opt_state).
  """
  shape = tuple(image_shape)
  ball = threat.ThreatModel(cfg.norm, _eps_unit(cfg, eps))
  delta = ball.init(rng, (1,) + shape, cfg.init, dtype=dtype)[0]
  return delta, _rule(cfg).init(delta)


def batch_gradient(fn: Callable, delta: jax.Array, batch: dict, cfg: UniversalConfig,
                   target: jax.Array | None = None) -> jax.Array:
  """Gradient of the masked mean loss of one batch with respect to delta.

  Args:
    fn: `x -> logits`.
    delta: [H, W, C] universal perturbation.
    batch: {'image': [B, H, W, C], 'label': [B] or [B, H, W], optional 'mask': [B]
      and optional 'target': each example's own target map [B, H, W] (a
      dynamic target, `tasks.labels.hide_class`), which takes the place of `target`}.
    cfg: universal config (loss and labels).
    target: optional target label map of a targeted attack (see `attack_labels`).

  Returns:
    [H, W, C] grad_delta 1/sum(mask) sum_i mask_i L_adv(clip(x_i + delta, 0, 1), y_i).
  """
  loss_fn = cfg.loss_fn()
  labels = attack_labels(batch["label"], cfg, batch.get("target", target))
  mask = batch_mask(batch)

  def mean_loss(delta):
    per_example = loss_fn(fn(threat.apply(batch["image"], delta)), labels)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  return jax.grad(mean_loss)(delta)


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg"))
def universal_step(logits_fn: Callable, delta: jax.Array, opt_state: Any, batch: dict, k,
                   cfg: UniversalConfig, *, variables: Any = None, eps=None,
                   target: jax.Array | None = None) -> tuple[jax.Array, Any]:
  """One update delta <- P_eps(delta + alpha_k rule(combined gradients)).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given (static).
    delta: [H, W, C] current perturbation.
    opt_state: the step rule's state (from `init_universal`).
    batch: one batch {'image': [B, H, W, C], 'label', 'mask': [B]}, or
      `cfg.grad_batches` of them stacked on a leading axis ([G, B, ...]).
    k: iteration index (traced), for the annealed schedule.
    cfg: universal config (static).
    variables: optional model variables (traced).
    eps: optional override of `cfg.eps` in 0-255 units (traced).
    target: optional target label map of a targeted attack (traced).

  Returns:
    (delta [H, W, C] inside the eps ball, new opt_state).

  Raises:
    ConfigError: the number of stacked batches differs from `cfg.grad_batches`.
  """
  fn = core.bind(logits_fn, variables)
  eps_unit = _eps_unit(cfg, eps)
  stacked = batch["image"].ndim == delta.ndim + 2
  num = batch["image"].shape[0] if stacked else 1
  if num != cfg.grad_batches:
    raise ConfigError(f"universal_step got {num} batch(es) but grad_batches={cfg.grad_batches}")
  # Appendix D averages the signs of the batches' gradients, so the sign is
  # taken per batch; the stateful rules see the mean gradient.
  per_batch = jnp.sign if cfg.step_rule == "sign" else (lambda g: g)

  def one(b):
    return per_batch(batch_gradient(fn, delta, b, cfg, target))

  if not stacked:
    combined = one(batch)
  elif num == 1:
    combined = one(jax.tree.map(lambda v: v[0], batch))
  else:
    # Sequential over the G batches: memory of one batch, not G.
    combined = jnp.mean(lax.map(one, batch), axis=0)
  ball = threat.ThreatModel(cfg.norm, eps_unit)

  def project(d):
    # ThreatModel.project takes a leading perturbation axis; delta is a single one.
    return ball.project(d[None])[0]

  return core.ascend(delta, combined, opt_state, _rule(cfg), cfg.step_sizes(eps_unit)(k), project)


def universal_perturbation(logits_fn: Callable,
                           batches: Iterable[dict] | Callable[[], Iterable[dict]],
                           rng: jax.Array, cfg: UniversalConfig, image_shape, *,
                           variables: Any = None, eps=None,
                           target: jax.Array | None = None) -> jax.Array:
  """Computes a universal perturbation by K streamed updates (module docstring).

  Only the `grad_batches` batches of the current update are held at a time,
  so the data may be larger than memory. Every update runs the same compiled
  `universal_step` as long as the batches keep one shape (pad and mask a
  ragged last batch).

  Args:
    logits_fn: `x -> logits`, or a builder when `variables` is given; reuse one
      object across calls to reuse the compilation.
    batches: {'image', 'label', 'mask'} dicts; see `advjax.data.streams.cycle`.
    rng: PRNG key (initialisation).
    cfg: universal config.
    image_shape: (H, W, C) of one image.
    variables: optional model variables (traced).
    eps: optional radius in 0-255 units overriding `cfg.eps` (traced, so
      searches over eps share one compilation).
    target: optional target label map [H, W] of a targeted attack.

  Returns:
    delta [H, W, C] with ||delta|| <= eps, applied as clip(x + delta, 0, 1).
  """
  eps = jnp.asarray(cfg.eps if eps is None else eps, jnp.float32)
  delta, opt_state = init_universal(rng, cfg, image_shape, eps)
  if cfg.num_steps == 0:
    return delta
  stream = streams.cycle(batches, "universal attack")
  for k in range(cfg.num_steps):
    group = [next(stream) for _ in range(cfg.grad_batches)]
    batch = group[0] if cfg.grad_batches == 1 else jax.tree.map(
        lambda *v: jnp.stack(v), *group)
    delta, opt_state = universal_step(logits_fn, delta, opt_state, batch, jnp.int32(k), cfg,
                                      variables=variables, eps=eps, target=target)
  return delta
