"""DeepFool (Moosavi-Dezfooli et al., 2016), batched, multi-class, L2 or L-inf.

DeepFool linearises the classifier around the current point and steps to the
nearest linearised decision boundary. For true class y and candidate classes
k != y, with f'_k = z_k - z_y and w'_k = grad f'_k, it picks

  l = argmin_k |f'_k| / ||w'_k||_q      (q the dual norm: 2 for L2, 1 for L-inf)

and adds r = (|f'_l| + 1e-4) w'_l / ||w'_l||_2^2 (L2) or
(|f'_l| + 1e-4) sign(w'_l) / ||w'_l||_1 (L-inf) to the accumulated r_tot. The
image is x + (1 + overshoot) r_tot, clipped to [0, 1]; the 1e-4 and the
overshoot on the total follow the authors' reference code. Candidates are the
`num_candidates` classes with the highest clean logits (the label always
included), as in the reference code's `num_classes`.

The universality paper uses DeepFool as a third adversary beside FGSM and BI.
Here every example runs in one batch under a `lax.while_loop`: an example
stops changing once it is misclassified (by masking), and the loop ends as
soon as no example is still classified as its label, or after `num_steps`
iterations, as the reference implementations stop. `deepfool_with_info` also
returns each example's iteration count and whether it was fooled, which the
iterative-DeepFool universal perturbation needs. torchattacks applies the
overshoot to each step instead of the total; their perturbations differ by a
factor close to 1.
"""

import dataclasses
import functools
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from advjax.cpu import compilation
from advjax.attacks import threat
from advjax.errors import ConfigError

_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class DeepFoolConfig:
  """DeepFool hyper-parameters (hashable; a jit static argument).

  Attributes:
    num_steps: number of linearisation steps (reference default 50).
    overshoot: factor (1 + overshoot) on the total perturbation (default 0.02).
    num_candidates: classes considered, the label plus the top others.
    norm: 'l2' or 'linf'.
  """
  num_steps: int = 50
  overshoot: float = 0.02
  num_candidates: int = 10
  norm: str = "l2"

  RENAMED: ClassVar[dict[str, str]] = {"max_iter": "num_steps"}

  def __post_init__(self):
    if not (isinstance(self.num_steps, int) and self.num_steps >= 0):
      raise ConfigError(f"num_steps={self.num_steps!r}: must be an int >= 0")
    if self.overshoot < 0:
      raise ConfigError(f"overshoot={self.overshoot!r}: must be >= 0")
    if not (isinstance(self.num_candidates, int) and self.num_candidates >= 2):
      raise ConfigError(
          f"num_candidates={self.num_candidates!r}: must be an int >= 2")
    if self.norm not in threat.NORMS:
      raise ConfigError(f"norm={self.norm!r}: must be one of linf, l2")


class DeepFoolResult(NamedTuple):
  """What `deepfool_with_info` returns.

  Attributes:
    x_adv: [batch, H, W, C] adversarial images in [0, 1].
    iterations: [batch] int32 linearisation steps each example took.
    fooled: [batch] bool, whether x_adv is classified as another class than the label.
  """
  x_adv: jax.Array
  iterations: jax.Array
  fooled: jax.Array


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg"))
def deepfool_with_info(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array,
                       cfg: DeepFoolConfig = DeepFoolConfig()) -> DeepFoolResult:
  """DeepFool with each example's iteration count and success (see `deepfool`)."""
  del rng
  if y.ndim != 1:
    raise ConfigError(f"DeepFool moves each example across one decision boundary, so it needs class labels "
                      f"[batch], not labels of shape {y.shape}")
  clean = logits_fn(x)
  num_classes = clean.shape[-1]
  k = min(cfg.num_candidates, num_classes) - 1
  onehot = jax.nn.one_hot(y, num_classes, dtype=bool)
  others = lax.top_k(jnp.where(onehot, -jnp.inf, clean), k)[1]
  bshape = (-1,) + (1,) * (x.ndim - 1)

  def differences(x_adv):
    logits = logits_fn(x_adv)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)
    return jnp.take_along_axis(logits, others, axis=-1) - z_y, logits

  def current(r_tot):
    return jnp.clip(x + (1.0 + cfg.overshoot) * r_tot, 0.0, 1.0)

  def cond(carry):
    i, _, active, _ = carry
    return (i < cfg.num_steps) & jnp.any(active)

  def body(carry):
    i, r_tot, active, iterations = carry
    f, vjp, logits = jax.vjp(differences, current(r_tot), has_aux=True)
    active = active & (jnp.argmax(logits, axis=-1) == y)
    basis = jnp.eye(k, dtype=f.dtype)[:, None, :] * jnp.ones_like(f)[None]
    w = jax.vmap(lambda e: vjp(e)[0])(basis)
    dual = 2 if cfg.norm == "l2" else 1
    w_norm = jax.vmap(lambda v: threat.per_perturbation_norm(v, dual).reshape(-1))(w)
    ratio = jnp.abs(f).T / (w_norm + _TINY)
    best = jnp.argmin(ratio, axis=0)
    w_l = jnp.take_along_axis(w, best[None].reshape((1,) + bshape), axis=0)[0]
    f_l = jnp.abs(jnp.take_along_axis(f, best[:, None], axis=-1))[:, 0] + 1e-4
    n_l = jnp.take_along_axis(w_norm, best[None], axis=0)[0]
    if cfg.norm == "l2":
      r = (f_l / (n_l ** 2 + _TINY)).reshape(bshape) * w_l
    else:
      r = (f_l / (n_l + _TINY)).reshape(bshape) * jnp.sign(w_l)
    return (i + 1, r_tot + jnp.where(active.reshape(bshape), r, 0.0), active,
            iterations + active.astype(jnp.int32))

  # The clean pass decides who starts: an example already misclassified never moves.
  start = jnp.argmax(clean, axis=-1) == y
  carry = (jnp.int32(0), jnp.zeros_like(x), start, jnp.zeros(y.shape, jnp.int32))
  _, r_tot, _, iterations = lax.while_loop(cond, body, carry)
  x_adv = current(r_tot)
  return DeepFoolResult(x_adv, iterations, jnp.argmax(logits_fn(x_adv), axis=-1) != y)


def deepfool(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array,
             cfg: DeepFoolConfig = DeepFoolConfig()) -> jax.Array:
  """Minimal perturbations that change each example's class.

  Args:
    logits_fn: `x -> [batch, classes]` closure (static).
    x: [batch, height, width, channels] images in [0, 1].
    y: [batch] labels to move away from (true labels, or the clean predictions
      as in the reference code).
    rng: unused (DeepFool is deterministic); kept for the attack signature.
    cfg: `DeepFoolConfig` (static).

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1]; examples
    already misclassified are returned unchanged.
  """
  return deepfool_with_info(logits_fn, x, y, rng, cfg).x_adv
