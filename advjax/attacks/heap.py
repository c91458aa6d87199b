"""Heap adversary of shared adversarial training (Mummadi et al., sec. 4.2-4.3).

A mini-batch of d examples is split into d/s heaps of s consecutive examples;
s is the paper's *sharedness*, called `heap_size` here (advjax keeps the word
sharedness for the universality paper's measure, `advjax.analysis.sharedness`).
A heap adversary finds one perturbation xi per heap that
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
members' input gradients (the transpose of the broadcast). The restarts and
iterations are `pgd.projected_ascent`, the same code as `pgd.attack`'s (which
is heaps of 1), so every step rule, schedule, input diversity and restart
option of `AttackConfig` applies unchanged. Labels may be class indices or dense label maps: a heap of
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

from advjax import tasks as tasks_lib
from advjax.attacks import pgd as pgd_lib
from advjax.cpu import compilation
from advjax.errors import ConfigError


def heap_labels(logits_fn, x: jax.Array, y: jax.Array, rng: jax.Array,
                cfg: pgd_lib.AttackConfig, heap_size: int, task: tasks_lib.Task,
                targets: jax.Array | None = None) -> jax.Array:
  """The labels the heap loss is evaluated on: one target per heap if targeted.

  Args:
    logits_fn: `x -> logits`.
    x: [batch, H, W, C] clean images.
    y: [batch] or [batch, H, W] true labels.
    rng: PRNG key for random targets.
    cfg: attack config.
    heap_size: s; batch % s == 0.
    task: draws random targets.
    targets: optional given targets shaped like y (targeted only).

  Returns:
    int32 labels shaped like y; random targets are constant within each heap.
  """
  if cfg.targeted and targets is None:
    num_classes = jax.eval_shape(logits_fn, x).shape[-1]
    # Drawn as pgd.attack draws one for a single example, from the heap's first label.
    per_heap = task.random_targets(rng, y[::heap_size], num_classes)
    return jnp.repeat(per_heap, heap_size, axis=0, total_repeat_length=y.shape[0])
  return pgd_lib.attack_labels(logits_fn, x, y, rng, cfg, task, targets)


def check_heap_size(batch_size: int, heap_size: int) -> None:
  """Raises ConfigError unless 1 <= heap_size and heap_size divides batch_size."""
  if not isinstance(heap_size, int) or heap_size < 1:
    raise ConfigError(f"heap_size={heap_size!r} must be an int >= 1")
  if batch_size % heap_size:
    raise ConfigError(f"heap_size={heap_size} must divide the batch size {batch_size} "
                      f"(heaps are {heap_size} consecutive examples)")


@functools.partial(compilation.jit, static_argnames=("logits_fn", "cfg", "heap_size", "task"))
def heap_attack(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
                rng: jax.Array, cfg: pgd_lib.AttackConfig, heap_size: int, eps=None,
                targets: jax.Array | None = None, task: tasks_lib.Task | None = None) -> jax.Array:
  """Shared perturbations on heaps of `heap_size` consecutive examples (sec. 4.2).

  Args:
    logits_fn: `x -> logits` closure with the parameters bound (static).
    x: [batch, height, width, channels] clean images in [0, 1]; batch must be
      a multiple of `heap_size`.
    y: [batch] class labels or [batch, height, width] label maps (-1 ignored).
    rng: PRNG key, used exactly as `pgd.attack` uses it.
    cfg: `AttackConfig` (static): steps, step rule, schedule, loss (e.g.
      'clipped_cross_entropy'), label smoothing, restarts.
    heap_size: the sharedness s of the paper (static); 1 is per-example PGD,
      batch is one batch-universal perturbation.
    eps: optional traced override of `cfg.eps`, 0-255 units.
    targets: optional targets shaped like y for targeted attacks.
    task: static; default `advjax.tasks.for_labels(y)`.

  Returns:
    [batch, height, width, channels] adversarial images in [0, 1]; within a heap
    x_adv - x is the same perturbation wherever the box did not clip it.

  Raises:
    ConfigError: `heap_size` does not divide the batch.
  """
  check_heap_size(x.shape[0], heap_size)
  task = tasks_lib.for_labels(y) if task is None else task
  k_labels, k_restarts = jax.random.split(rng)
  labels = heap_labels(logits_fn, x, y, k_labels, cfg, heap_size, task, targets)
  return pgd_lib.projected_ascent(logits_fn, x, y, labels, k_restarts, cfg, task, heap_size=heap_size, eps=eps)
