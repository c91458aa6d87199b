"""Segmentation evaluators: table 2.1 of the Xie thesis (DAG) and a figure of attacked predictions.

'dag' reproduces the measurements of sec. 2.3.3-2.3.5 on the held-out label
maps. Every image is attacked by Dense Adversary Generation
(`advjax.attacks.dag`, Algorithm 1) and the task's metrics are computed on
three image sets:

  ORIG  the clean images X
  ADVR  the adversarial images X + r
  PERM  X + perm(r): r with its rows and columns randomly permuted per image,
        the control showing that r's spatial structure, not its magnitude,
        does the damage; the thesis averages 3 draws (`perm_draws`)

with the mean number of DAG iterations (fig. 2.4) and the mean
perceptibility p = (1/K sum_k ||r_k||_2^2)^(1/2) on the [0, 1] intensity
scale (sec. 2.3.5; the thesis reports 2.5e-3 to 3.0e-3 for FCNs on VOC).
Metrics are the task's confusion-matrix statistics (`Task.metric_sums`), so
padding examples and ignored pixels are left out exactly as in 'clean'.
Padding images (and images past `max_examples`) get all-ignored labels
before the attack, so they have no targets and stop at once.

Randomness: batch i uses k_i = fold_in(ctx.key(entry name), i); split(k_i)
gives the DAG key (the per-image derangements) and the PERM key, whose draw d
is fold_in(PERM key, d).

'seg_figure' writes `<entry name>.png` to the context's output directory:
the first `num_images` held-out images, their ground truth, the clean and
the adversarial predictions under L-inf PGD at `eps` (or DAG) as VOC-coloured
label maps, and the amplified perturbation (`advjax.viz.save_segmentation_figure`).

Both need a segmentation task; on classification data they raise one
ConfigError naming the entry.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax import viz
from advjax.attacks import core, dag as dag_lib, pgd as pgd_lib
from advjax.errors import ConfigError
from advjax.evaluation import base, robustness


class _SegmentationEvaluator(base.Evaluator):
  """An evaluator that only makes sense on label maps."""

  kind = "segmentation"

  def __init__(self, name, args, ctx):
    super().__init__(name, args, ctx)
    if not isinstance(ctx.task, tasks_lib.Segmentation):
      raise ConfigError(f"config.evals.{name}: the '{self.kind}' evaluator needs a segmentation task "
                        f"(label maps [batch, height, width]), but the data's task is {ctx.task.name}")


@functools.partial(compilation.jit, static_argnames=("model_fn", "cfg", "task", "perm_draws"))
def _dag_sums(model_fn, variables, batch, rng, offset, limit, cfg, task, perm_draws):
  """One batch: metric sums of ORIG, ADVR and each PERM draw, and DAG's per-image statistics summed."""
  fn = core.bind(model_fn, variables)
  x, y, mask = batch["image"], batch["label"], batch["mask"].astype(jnp.float32)
  # Real examples past the first `limit` of the split are dropped like padding.
  keep = mask * ((offset + jnp.cumsum(mask)) <= limit).astype(jnp.float32)
  y_attack = jnp.where(keep.reshape(-1, 1, 1) > 0, y, -1)
  k_dag, k_perm = jax.random.split(rng)
  result = dag_lib.dag(fn, x, y_attack, k_dag, cfg)
  perm = []
  for d in range(perm_draws):
    _, x_perm = dag_lib.perm_control(jax.random.fold_in(k_perm, d), x, result.perturbation)
    perm.append(task.metric_sums(fn(x_perm), y, keep))
  stats = {"iterations": jnp.sum(result.iterations * keep),
           "perceptibility": jnp.sum(result.perceptibility * keep),
           "converged": jnp.sum((result.remaining == 0) * keep),
           "count": jnp.sum(keep), "real": jnp.sum(mask)}
  return task.metric_sums(fn(x), y, keep), task.metric_sums(fn(result.x_adv), y, keep), tuple(perm), stats


class DAG(_SegmentationEvaluator):
  """'dag': ORIG / ADVR / PERM metrics, iterations and perceptibility of DAG (Xie thesis, table 2.1).

  Yields 'orig', 'advr' (the task's metrics: pixel_accuracy, miou, iou, ...),
  'perm' ({'pixel_accuracy', 'miou'} averaged over the draws, 'draws'),
  'iterations' (mean DAG iterations), 'perceptibility' (mean p, [0, 1]
  scale), 'converged' (fraction of images whose active set emptied) and
  'num_examples', all over the real examples attacked.
  """

  kind = "dag"

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      dag: the attack (`dag.DAGConfig`: gamma, the step length in 0-255 units,
        thesis 0.5; num_steps, M0, thesis 200 for segmentation;
        background_class, the label whose pixels are not attacked, -1 none).
      max_examples: attack only the first this many held-out examples; 0 = all.
      perm_draws: random permutations of r averaged for PERM (thesis: 3).
    """
    dag: dag_lib.DAGConfig = dag_lib.DAGConfig()
    max_examples: int = 0
    perm_draws: int = 3

    RENAMED: ClassVar[dict[str, str]] = {"gamma": "dag.gamma", "max_iter": "dag.num_steps",
                                         "background_class": "dag.background_class"}

    def __post_init__(self):
      if self.max_examples < 0:
        raise ConfigError(f"dag evaluator: max_examples={self.max_examples!r} must be >= 0 (0 = all)")
      if self.perm_draws < 1:
        raise ConfigError(f"dag evaluator: perm_draws={self.perm_draws!r} must be >= 1")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    cfg = a.dag
    task, rng = self.ctx.task, self.ctx.key(self.name)
    limit = float(a.max_examples) if a.max_examples > 0 else np.inf
    orig = adv = stats = None
    perm = [None] * a.perm_draws
    seen = 0.0
    for i, batch in enumerate(self.ctx.held_out()):
      if seen >= limit:
        break
      o, r, p, s = _dag_sums(self.ctx.model_fn, variables, batch, jax.random.fold_in(rng, i),
                             jnp.float32(seen), jnp.float32(limit), cfg, task, a.perm_draws)
      orig, adv, stats = base.add_sums(orig, o), base.add_sums(adv, r), base.add_sums(stats, s)
      perm = [base.add_sums(total, sums) for total, sums in zip(perm, p)]
      seen += float(s["real"])
    if orig is None:
      raise ConfigError(f"config.evals.{self.name}: no held-out batches to attack")
    count = max(float(stats["count"]), 1.0)
    perm_values = [task.metric_values(total) for total in perm]
    yield "orig", task.metric_values(orig)
    yield "advr", task.metric_values(adv)
    yield "perm", {"pixel_accuracy": float(np.mean([v["pixel_accuracy"] for v in perm_values])),
                   "miou": float(np.mean([v["miou"] for v in perm_values])), "draws": a.perm_draws}
    yield "iterations", float(stats["iterations"]) / count
    yield "perceptibility", float(stats["perceptibility"]) / count
    yield "converged", float(stats["converged"]) / count
    yield "num_examples", int(round(float(stats["count"])))


@functools.partial(compilation.jit, static_argnames=("model_fn", "cfg", "task"))
def _figure_arrays(model_fn, variables, x, y, rng, cfg, task):
  """(clean prediction, adversarial prediction, perturbation) of a few images under PGD or DAG."""
  fn = core.bind(model_fn, variables)
  if isinstance(cfg, dag_lib.DAGConfig):
    x_adv = dag_lib.attack(fn, x, y, rng, cfg)
  else:
    x_adv = pgd_lib.attack(fn, x, y, rng, cfg, task=task)
  return jnp.argmax(fn(x), -1), jnp.argmax(fn(x_adv), -1), x_adv - x


def first_examples(batches, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `n` real (mask = 1) examples of `batches`.

  Returns:
    Host arrays (images [n, H, W, C], labels [n, H, W]); fewer rows if the batches hold fewer.
  """
  images, labels, have = [], [], 0
  for batch in batches:
    real = np.asarray(jax.device_get(batch["mask"])) > 0
    images.append(np.asarray(jax.device_get(batch["image"]))[real][:n - have])
    labels.append(np.asarray(jax.device_get(batch["label"]))[real][:n - have])
    have += len(images[-1])
    if have >= n:
      break
  if not have:
    return np.zeros((0,)), np.zeros((0,))
  return np.concatenate(images), np.concatenate(labels)


class SegFigure(_SegmentationEvaluator):
  """'seg_figure': a PNG of images, ground truth, clean and adversarial predictions, perturbations.

  Writes `<out_dir>/<entry name>.png` and yields 'path' and 'num_images';
  with no output directory (evaluations during training) it draws nothing
  and yields path None.
  """

  kind = "seg_figure"

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      num_images: rows of the figure, the first held-out examples.
      adversary: 'pgd' (the `attack` block) or 'dag' (the `dag` block).
      attack: PGD (`pgd.AttackConfig`), a step_size of 0 meaning 2.5 * eps /
        num_steps; its eps is also the perturbation's display range.
        Default L-inf PGD-10 at eps 8 with a random start.
      dag: DAG (`dag.DAGConfig`).
      panel_px: side of one panel of the figure in pixels.
    """
    num_images: int = 4
    adversary: str = "pgd"
    attack: pgd_lib.AttackConfig = pgd_lib.AttackConfig(eps=8.0, num_steps=10, step_size=0.0, init="uniform")
    dag: dag_lib.DAGConfig = dag_lib.DAGConfig()
    panel_px: int = 128

    RENAMED: ClassVar[dict[str, str]] = {"eps": "attack.eps", "steps": "attack.num_steps",
                                         "step_size": "attack.step_size", "gamma": "dag.gamma",
                                         "max_iter": "dag.num_steps", "background_class": "dag.background_class"}

    def __post_init__(self):
      if self.num_images < 1:
        raise ConfigError(f"seg_figure evaluator: num_images={self.num_images!r} must be >= 1")
      if self.adversary not in ("pgd", "dag"):
        raise ConfigError(f"seg_figure evaluator: adversary={self.adversary!r} must be 'pgd' or 'dag'")
      if not 0 < self.attack.eps <= 255 or self.attack.num_steps < 1:
        raise ConfigError("seg_figure evaluator: attack.eps must be in (0, 255] and attack.num_steps >= 1")
      if self.panel_px < 8:
        raise ConfigError(f"seg_figure evaluator: panel_px={self.panel_px!r} must be >= 8")

  def attack_config(self) -> pgd_lib.AttackConfig | dag_lib.DAGConfig:
    """The attack of the figure: PGD at its eps, or DAG."""
    a = self.args
    return a.dag if a.adversary == "dag" else robustness.at_radius(a.attack, a.attack.eps)

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    if self.ctx.out_dir is None:
      yield "path", None
      return
    x, y = first_examples(self.ctx.held_out(), a.num_images)
    if not len(x):
      raise ConfigError(f"config.evals.{self.name}: no held-out examples to draw")
    cfg = self.attack_config()
    arrays = _figure_arrays(self.ctx.model_fn, variables, jnp.asarray(x), jnp.asarray(y),
                            self.ctx.key(self.name), cfg, self.ctx.task)
    clean, adv, delta = jax.device_get(arrays)
    if a.adversary == "dag":
      title, eps = f"DAG, gamma {a.dag.gamma:g}", None
    else:
      title, eps = f"PGD-{a.attack.num_steps}, eps {a.attack.eps:g}", a.attack.eps / 255.0
    path = viz.save_segmentation_figure(os.path.join(self.ctx.out_dir, f"{self.name}.png"), x, y, clean, adv,
                                        delta, eps=eps, adv_title=title, panel_px=a.panel_px)
    yield "path", path
    yield "num_images", len(x)
