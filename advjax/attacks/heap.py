"""Heap adversary of shared adversarial training (Mummadi et al., sec. 4.2-4.3).

A mini-batch of d examples is split into d/s heaps of s consecutive examples;
s is the *sharedness*. A heap adversary finds one perturbation xi per heap that
maximises the heap's mean loss

  L_uni(theta, {x_i, y_i}_{i=1}^s, xi) = 1/s sum_i L_adv(theta, x_i + xi, y_i)

and broadcasts it to every member of the heap. The implied risks are ordered
rho_adv = rho_heap^(1) >= rho_heap^(2) >= ... >= rho_heap^(d) >= rho_uni
(sec. 4.2), so s interpolates between per-example adversarial training (s=1)
and a batch-universal perturbation (s=d).

As the paper notes, PGD becomes a heap adversary by reshaping and broadcasting:
x [d, H, W, C] is viewed as [d/s, s, H, W, C] and the perturbation is held as
[d/s, H, W, C], broadcast over the heap axis. The model still sees the flat
batch of d examples once per step, so a step costs what a per-example PGD step
costs, and the gradient with respect to a heap's perturbation is the sum of its
members' input gradients (the transpose of the broadcast). The iterations are
the generic `core.optimize` (through `pgd.optimize_perturbation`), so every
step rule, schedule, input diversity and restart option of `AttackConfig`
applies unchanged. Labels may be class indices or dense label maps: a heap of
segmentation images shares one perturbation and maximises the mean of its
members' per-image (pixel-averaged) losses.

Loss thresholding min(CE, kappa) (sec. 4.3, kappa = -log 0.2) is
`cfg.loss='clipped_cross_entropy'`; label smoothing is `cfg.label_smoothing`.
The thresholding matters here more than for s=1: without a cap, the members of
a heap compete and the perturbation tends to fool a few of them with high
confidence instead of many of them.

The box [0, 1] is handled as follows. With s=1 the perturbation is per example,
so it is clipped to the box after each step exactly as in `pgd.attack`, and
`heap_attack` with s=1 reproduces `pgd.attack` bit for bit. With s>1 the
members of a heap have different pixels, so no single perturbation can fold
the box of all of them: the shared perturbation is projected onto the eps ball
only and the box is applied whenever it is added, in every forward pass of
the attack as in the result: x_adv = clip(x + xi, 0, 1), so a member whose
pixel is clipped passes no gradient to the heap's perturbation there.

Targeted heaps have one target per heap. Given `targets` are per example
(shaped like y, as for `pgd.attack`; giving the same target to each member of a
heap is the usual choice). Otherwise each heap draws its target the way
`pgd.attack` draws one for a single example, from the label of the heap's
*first* member (a random wrong class, or for label maps that member's map
relabelled by the task); for s=1 this is exactly `pgd.attack`'s choice.
Members whose true label equals the heap's target still contribute their
targeted loss to L_uni (keeping them at the target is part of the heap's
objective, as in the fixed-target universal attack of sec. 6.3).

With restarts, the strongest restart is kept per heap (`core.keep_stronger`):
by the heap's mean loss ('loss') or by its members' mean success, ties broken
by loss ('misclassified').
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax.attacks import core, diversity, threat
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError


def heap_labels(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array,
                cfg: pgd_lib.AttackConfig, sharedness: int, task: tasks_lib.Task,
                targets: jax.Array | None = None) -> jax.Array:
  """The labels the heap loss is evaluated on: one target per heap if targeted.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, H, W, C] clean images.
    y: [batch] or [batch, H, W] true labels.
    rng: PRNG key for random targets.
    cfg: attack config.
    sharedness: heap size s; batch % s == 0.
    task: draws random targets.
    targets: optional given targets shaped like y (targeted only).

  Returns:
    int32 labels shaped like y; random targets are constant within each heap.
  """
  if cfg.targeted and targets is None:
    num_classes = jax.eval_shape(logits_fn, x).shape[-1]
    # Drawn as pgd.attack draws one for a single example, from the heap's first label.
    per_heap = task.random_targets(rng, y[::sharedness], num_classes)
    return jnp.repeat(per_heap, sharedness, axis=0, total_repeat_length=y.shape[0])
  return pgd_lib.attack_labels(logits_fn, x, y, rng, cfg, task, targets)


def check_sharedness(batch_size: int, sharedness: int) -> None:
  """Raises ConfigError unless 1 <= sharedness and sharedness divides batch_size."""
  if not isinstance(sharedness, int) or sharedness < 1:
    raise ConfigError(f"sharedness={sharedness!r} must be an int >= 1")
  if batch_size % sharedness:
    raise ConfigError(f"sharedness={sharedness} must divide the batch size {batch_size} "
                      f"(heaps are {sharedness} consecutive examples)")


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg", "sharedness", "task"))
def heap_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                rng: jax.Array, cfg: pgd_lib.AttackConfig, sharedness: int, eps=None,
                targets: jax.Array | None = None, task: tasks_lib.Task | None = None) -> jax.Array:
  """Shared perturbations on heaps of `sharedness` consecutive examples (sec. 4.2).

  Args:
    logits_fn: `x -> logits` closure with the parameters bound (static).
    x: [batch, height, width, channels] clean images in [0, 1]; batch must be
      a multiple of `sharedness`.
    y: [batch] class labels or [batch, height, width] label maps (-1 ignored).
    rng: PRNG key, used exactly as `pgd.attack` uses it.
    cfg: `AttackConfig` (static): steps, step rule, schedule, loss (e.g.
      'clipped_cross_entropy'), label smoothing, restarts.
    sharedness: heap size s (static); 1 is per-example PGD, batch is one
      batch-universal perturbation.
    eps: optional traced override of `cfg.eps`, 0-255 units.
    targets: optional targets shaped like y for targeted attacks.
    task: static; default `advjax.tasks.for_labels(y)`.

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1]; within a heap
    x_adv - x is the same perturbation wherever the box did not clip it.

  Raises:
    ConfigError: `sharedness` does not divide the batch.
  """
  s = sharedness
  check_sharedness(x.shape[0], s)
  task = tasks_lib.for_labels(y) if task is None else task
  num_heaps = x.shape[0] // s
  heap_shape = (num_heaps, s) + x.shape[1:]
  delta_shape = (num_heaps,) + x.shape[1:]
  x_heaps = x.reshape(heap_shape)

  sizes = pgd_lib.resolve_sizes(cfg, eps)
  ball = pgd_lib.threat_model(cfg, sizes)
  k_labels, k_restarts = jax.random.split(rng)
  labels = heap_labels(logits_fn, x, y, k_labels, cfg, s, task, targets)
  loss_fn = pgd_lib.attack_loss(cfg)

  def perturbed(delta):
    # [heaps, H, W, C] broadcast over the heap axis, then the flat batch the model expects.
    if s == 1:
      # delta already holds the box (see `project`), exactly as in pgd.attack.
      return (x_heaps + delta[:, None]).reshape(x.shape)
    # The model must see the clipped image it will be attacked with; clipped
    # pixels then pass no gradient to the shared delta.
    return threat.apply(x_heaps, delta[:, None]).reshape(x.shape)

  def objective(delta, key):
    x_in = diversity.input_diversity(key, perturbed(delta), cfg.diversity_prob,
                                     cfg.diversity_ratio)
    # Sum over heaps of L_uni; each heap's delta only sees its own mean.
    return jnp.sum(loss_fn(logits_fn(x_in), labels)) / s

  def project(delta):
    # Folding the box into delta is only possible when delta belongs to one example.
    return ball.project(delta, x if s == 1 else None)

  def heap_mean(v):
    return jnp.mean(v.reshape(num_heaps, s).astype(jnp.float32), axis=1)

  def run(r):
    k_init, k_steps = jax.random.split(jax.random.fold_in(k_restarts, r))
    delta = project(ball.init(k_init, delta_shape, cfg.init, cfg.clean_init_fraction, x.dtype))
    delta = pgd_lib.optimize_perturbation(objective, delta, k_steps, cfg, sizes, project)
    x_adv = threat.apply(x_heaps, delta[:, None]).reshape(x.shape)
    logits = logits_fn(x_adv)
    return core.Candidate(x_adv, heap_mean(loss_fn(logits, labels)),
                          heap_mean(task.success(logits, y, labels, cfg.targeted)))

  return core.best_of_restarts(run, cfg.restarts, cfg.restart_select, unit_size=s,
                               parallel=cfg.parallel_restarts)
