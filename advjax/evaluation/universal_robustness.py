"""Measuring universal perturbations, and the eps_uni(delta) search.

A universal perturbation delta [H, W, C] (`advjax.attacks.universal`) is
judged on held-out data with it added, x + delta clipped to [0, 1]:

  accuracy        the task's metrics on the perturbed data (for a targeted
                  attack, also against the target: the fraction of examples,
                  or of pixels, that land on it)
  fooling ratio   the fraction of examples whose prediction changes (UAT
                  paper, footnote 1; for label maps, of valid pixels)

eps_uni(delta) is the universal robustness of shared adversarial training
(sec. 5.1-5.2): the smallest L-inf radius at which a universal perturbation
reaches the rate delta. As in the paper, each probe fits the universal
adversary with stochastic PGD on training data (5000 validation images in
mini-batches of m_k = 16 there) and measures the rate on held-out data (512
test images there), by the bisection of `advjax.evaluation.search`. The rate
is the misclassification (pixel error) rate, or for a targeted attack the
rate of hitting the target: for segmentation with a target scene, the pixel
accuracy against the target map (the shared-AT paper's success criterion,
pixel accuracy >= delta = 0.95). A target can also be each image's own map
(Metzen et al.'s dynamic target, a class hidden behind its neighbours): the
batches then carry it as 'target'. The radius is traced, so the probes share
one compilation.

Evaluators (`config.evals` types): 'eps_uni' (the search; the perturbation
found is saved as `<entry>.npy` and an amplified `<entry>.png`) and
'universal' (accuracy and fooling ratio under a perturbation of fixed radius,
the UAT paper's tables 1-2, optionally beside the iterative DeepFool universal
perturbation, with the wall time of each).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax.cpu import compilation
from advjax import tasks as tasks_lib
from advjax import viz
from advjax.attacks import core, threat
from advjax.attacks import universal as universal_lib
from advjax.attacks import universal_deepfool
from advjax.data.segmentation import colorize
from advjax.errors import ConfigError, DataError
from advjax.evaluation import base, search, segmentation
from advjax.tasks import labels as labels_lib


@functools.partial(compilation.jit, static_argnames=("model_fn", "task"))
def _universal_sums(model_fn, variables, batch, delta, target, task):
  fn = core.bind(model_fn, variables)
  y, mask = batch["label"], universal_lib.batch_mask(batch)
  clean_logits = fn(batch["image"])
  adv_logits = fn(threat.apply(batch["image"], delta))
  # Fooled positions (examples, or valid pixels of real images) as exact integer counts.
  real = (labels_lib.valid(y) & (mask.reshape((-1,) + (1,) * (y.ndim - 1)) > 0))
  changed = jnp.argmax(adv_logits, -1) != jnp.argmax(clean_logits, -1)
  sums = {"clean": task.metric_sums(clean_logits, y, mask), "adversarial": task.metric_sums(adv_logits, y, mask),
          "fooled": {"fooled": jnp.sum(changed & real, dtype=jnp.int32), "count": jnp.sum(real, dtype=jnp.int32)}}
  target = batch.get("target", target)  # Each example's own target (a dynamic target), if it has one.
  if target is not None:
    sums["target"] = task.metric_sums(adv_logits, jnp.broadcast_to(target, y.shape).astype(jnp.int32), mask)
  return sums


def evaluate_universal(model_fn: Callable, batches: Iterable[dict], delta: jax.Array, *,
                       task: tasks_lib.Task | None = None, variables: Any = None,
                       target: Any = None) -> dict[str, Any]:
  """The task's metrics with a universal perturbation added, and its fooling ratio.

  Args:
    model_fn: `x -> logits`, or a builder when `variables` is given.
    batches: iterable of {'image', 'label', 'mask'} dicts (held-out data),
      optionally with each example's own 'target' map [B, H, W].
    delta: [H, W, C] universal perturbation.
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).
    target: optional target of a targeted attack: a class, or a label map
      [H, W]; adds the metrics against it.

  Returns:
    {'clean': metrics, 'adversarial': metrics on clip(x + delta, 0, 1),
     'fooling_ratio': the fraction of examples (of valid pixels, for label
     maps) whose prediction changes, and 'target': metrics against the
     target if one is given}.
  """
  target = None if target is None else jnp.asarray(target, jnp.int32)
  totals = None
  for batch in batches:
    task = base.task_for(task, model_fn, variables, batch)
    sums = _universal_sums(model_fn, variables, batch, delta, target, task)
    totals = {k: base.add_sums(None if totals is None else totals[k], v) for k, v in sums.items()}
  if totals is None:
    raise DataError("evaluate_universal: no batches")
  totals = jax.device_get(totals)
  out = {"clean": task.metric_values(totals["clean"]), "adversarial": task.metric_values(totals["adversarial"]),
         "fooling_ratio": int(totals["fooled"]["fooled"]) / max(int(totals["fooled"]["count"]), 1)}
  if "target" in totals:
    out["target"] = task.metric_values(totals["target"])
  return out


def success_rate(report: dict[str, Any], task: tasks_lib.Task, targeted: bool) -> float:
  """The rate a universal attack aims at: hitting the target, or the error rate."""
  return task.accuracy(report["target"]) if targeted else task.error_rate(report["adversarial"])


def eps_uni_search(model_fn: Callable,
                   attack_batches: Iterable[dict] | Callable[[], Iterable[dict]],
                   eval_batches: Iterable[dict], rng: jax.Array,
                   cfg: universal_lib.UniversalConfig | None = None, *, target_rate: float = 0.75,
                   num_steps: int = 10, lower: float = 0.0, upper: float = 255.0,
                   task: tasks_lib.Task | None = None, variables: Any = None,
                   target: Any = None, ignore_class: int | None = None) -> search.SearchResult:
  """Binary search for eps_uni(delta), the universal robustness of sec. 5.1-5.2.

  Args:
    model_fn: `x -> logits`, or a builder when `variables` is given.
    attack_batches: batches the adversary is fitted on, re-iterable or a
      callable returning a fresh iterable (every probe restarts it, so every
      probe sees the same stream).
    eval_batches: held-out batches (materialised once).
    rng: PRNG key, the same for every probe.
    cfg: universal config whose eps is ignored; default
      `universal.shared_at_eval_config()`. With `cfg.targeted` the rate is
      that of hitting the target (`target`, or `cfg.target_class`).
    target_rate: delta in (0, 1].
    num_steps: b, the number of bisection probes (paper: 10).
    lower: left end of the interval (0-255 units).
    upper: right end of the interval (0-255 units).
    task: scores the labels; default the one the labels' rank implies.
    variables: optional model variables (traced).
    target: optional target label map [H, W] of a targeted attack. Batches
      that carry their examples' own 'target' maps (a dynamic target) use
      those instead, in the adversary and in the rate.
    ignore_class: label maps only: a class whose pixels the rate leaves out,
      those of the ground truth (untargeted) or of the target (targeted);
      the adversary is still fitted on every pixel. None counts them all.

  Returns:
    The `search.SearchResult` (eps = eps_uni); its artifact is the [H, W, C]
    perturbation found at eps_uni as a numpy array (zeros if eps_uni = 0,
    None if not found).

  Raises:
    DataError: no evaluation batches.
  """
  cfg = universal_lib.shared_at_eval_config() if cfg is None else cfg
  held_out = list(eval_batches)
  if not held_out:
    raise DataError("eps_uni_search: eval_batches is empty")
  task = base.task_for(task, model_fn, variables, held_out[0])
  image_shape = tuple(held_out[0]["image"].shape[1:])
  per_example = "target" in held_out[0]
  if cfg.targeted and target is None and not per_example:
    target = cfg.target_class
  goal = None
  if cfg.targeted and per_example:
    held_out = [{**b, "target": labels_lib.ignore_class(b["target"], ignore_class)} for b in held_out]
  elif cfg.targeted:
    goal = labels_lib.ignore_class(jnp.asarray(target, jnp.int32), ignore_class)
  else:
    held_out = [{**b, "label": labels_lib.ignore_class(b["label"], ignore_class)} for b in held_out]

  def rate(delta):
    report = evaluate_universal(model_fn, held_out, delta, task=task, variables=variables, target=goal)
    return success_rate(report, task, cfg.targeted)

  def probe(eps):
    delta = universal_lib.universal_perturbation(model_fn, attack_batches, rng, cfg, image_shape,
                                                 variables=variables, eps=eps,
                                                 target=target if cfg.targeted else None)
    return rate(delta), np.asarray(delta)

  zero = np.zeros(image_shape, np.float32)
  return search.bisect(probe, target_rate=target_rate, clean_rate=rate(jnp.asarray(zero)), num_steps=num_steps,
                       lower=lower, upper=upper, clean_artifact=zero)


def save_perturbation(delta: np.ndarray, out_dir: str | None, name: str, eps: float) -> None:
  """`<name>.npy` and an amplified `<name>.png` in `out_dir` (process 0 only; nothing if out_dir is None)."""
  if out_dir is None or jax.process_index() != 0:
    return
  viz.save_perturbation(np.asarray(delta), os.path.join(out_dir, name), eps=eps / 255.0,
                        scale=max(1, 128 // delta.shape[0]))


class EpsUni(base.Evaluator):
  """'eps_uni': eps_uni(delta) of shared adversarial training by bisection; saves the perturbation."""

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      rate: delta, the rate to reach (misclassification, or target hits).
      search_steps: b, bisection probes on [0, 255].
      batch_size: m_k, training examples per iteration of the universal adversary.
      universal: the adversary (`advjax.attacks.universal.UniversalConfig`; its
        eps is set by the search); default the paper's K = 200, beta = 4, gamma = 0.975.
      max_examples: measure the rate on the first this many held-out examples; 0 = all.
      target_scene: label maps only, with `universal.targeted`: the target is
        a static scene, the label map of one training example (the first of
        the training stream named '<entry>/target_scene'), as in the
        shared-AT paper's sec. 6.3 (after Metzen et al.); the rate is the
        pixel accuracy against it. Saved as '<entry>_target.png'.
      figure_images: label maps only: '<entry>_predictions.png' shows this
        many held-out images with the perturbation found, their labels (the
        target scene for a targeted search), clean and perturbed predictions;
        0 draws none.
      ignore_class: label maps only: a class (e.g. the canvases' background,
        0) whose pixels of the ground truth (untargeted) or of the target
        (targeted) the rate leaves out; -1 counts every pixel.
      hide_class: label maps only, with `universal.targeted`: Metzen et
        al.'s dynamic target, each image's own label map with this class
        hidden behind the nearest pixels of other classes
        (`tasks.labels.hide_class`); the rate is the pixel accuracy against
        those maps. Computed on the host, so one process only; -1: none.
    """
    rate: float = 0.75
    search_steps: int = 10
    batch_size: int = 16
    universal: universal_lib.UniversalConfig = universal_lib.shared_at_eval_config()
    max_examples: int = 0
    target_scene: bool = False
    figure_images: int = 0
    ignore_class: int = -1
    hide_class: int = -1

    def __post_init__(self):
      if not 0 < self.rate <= 1:
        raise ConfigError(f"eps_uni evaluator: rate={self.rate!r} must be in (0, 1]")
      if self.search_steps < 1 or self.batch_size < 1:
        raise ConfigError("eps_uni evaluator: search_steps and batch_size must be >= 1")
      if self.max_examples < 0 or self.figure_images < 0:
        raise ConfigError("eps_uni evaluator: max_examples and figure_images must be >= 0")

  @classmethod
  def parse_args(cls, name, entry):
    args = super().parse_args(name, entry)
    cfg = args.universal
    if args.target_scene and not cfg.targeted:
      raise ConfigError(f"config.evals.{name}: target_scene needs a targeted attack (universal.targeted=True)")
    if args.hide_class >= 0 and (not cfg.targeted or args.target_scene):
      raise ConfigError(f"config.evals.{name}: hide_class needs a targeted attack (universal.targeted=True) "
                        "and no target_scene")
    return args

  def with_hidden_class(self, batches: Iterable[dict]) -> Iterator[dict]:
    """The batches, each with its examples' dynamic targets as 'target' (`hide_class`)."""
    if jax.process_count() > 1:
      raise ConfigError(f"config.evals.{self.name}: hide_class computes the targets on the host, one process only")
    for b in batches:
      labels = np.asarray(jax.device_get(b["label"]))
      if labels.ndim != 3:
        raise ConfigError(f"config.evals.{self.name}: hide_class needs label maps, but the labels are "
                          f"{labels.shape[1:] or 'class indices'}")
      target = labels_lib.hide_class(labels, self.args.hide_class)
      sharding = getattr(b["label"], "sharding", None)
      yield {**b, "target": jnp.asarray(target) if sharding is None else jax.device_put(target, sharding)}

  def target_scene(self) -> np.ndarray:
    """The static target scene: the label map of the first example of a named training stream."""
    batch = next(iter(self.ctx.train_stream(1, f"{self.name}/target_scene")()))
    labels = np.asarray(jax.device_get(batch["label"]))
    if labels.ndim != 3:
      raise ConfigError(f"config.evals.{self.name}: target_scene needs label maps, but the labels are "
                        f"{labels.shape[1:] or 'class indices'}")
    return labels[0]

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    cfg = a.universal
    target = self.target_scene() if a.target_scene else None
    held_out = list(base.first_examples(self.ctx.held_out(), a.max_examples))
    attack_batches = self.ctx.train_stream(a.batch_size, self.name)
    if a.hide_class >= 0:
      held_out = list(self.with_hidden_class(held_out))
      attack_batches = (lambda stream: lambda: self.with_hidden_class(stream()))(attack_batches)
    result = eps_uni_search(self.ctx.model_fn, attack_batches,
                            held_out, self.ctx.key(self.name), cfg, target_rate=a.rate,
                            num_steps=a.search_steps, task=self.ctx.task, variables=variables, target=target,
                            ignore_class=a.ignore_class)
    if result.artifact is not None:
      save_perturbation(result.artifact, self.ctx.out_dir, self.name, result.eps)
    yield "target_rate", a.rate
    yield from result.values().items()
    if target is not None and self.ctx.out_dir is not None and jax.process_index() == 0:
      viz.save_image(colorize(target).astype(np.float32) / 255.0, os.path.join(self.ctx.out_dir,
                                                                              f"{self.name}_target.png"))
    if a.figure_images and result.artifact is not None and self.ctx.out_dir is not None:
      yield "figure", self.prediction_figure(variables, held_out, result.artifact, result.eps, target)

  def prediction_figure(self, variables, held_out, delta, eps, target) -> str | None:
    """'<entry>_predictions.png': images with delta added, their labels (or the target), predictions."""
    x, y = segmentation.first_examples(held_out, self.args.figure_images)
    if y.ndim != 3 or jax.process_index() != 0:
      return None
    if self.args.hide_class >= 0:
      target = labels_lib.hide_class(y, self.args.hide_class)
    fn = self.ctx.model_fn(variables)
    perturbed = np.asarray(threat.apply(jnp.asarray(x), jnp.asarray(delta)))
    clean_pred = np.asarray(jnp.argmax(fn(jnp.asarray(x)), -1))
    adv_pred = np.asarray(jnp.argmax(fn(jnp.asarray(perturbed)), -1))
    labels = y if target is None else np.broadcast_to(target, y.shape)
    return viz.save_segmentation_figure(
        os.path.join(self.ctx.out_dir, f"{self.name}_predictions.png"), x, labels, clean_pred, adv_pred,
        np.broadcast_to(delta, x.shape), eps=max(eps, 1.0) / 255.0,
        adv_title=f"universal, eps {eps:.1f}",
        labels_title="ground truth" if target is None else "dynamic target" if self.args.hide_class >= 0
        else "target scene")


class Universal(base.Evaluator):
  """'universal': metrics and fooling ratio under universal perturbations of fixed radii (UAT tables 1-2).

  For each eps the perturbation of `universal` is fitted on training batches
  and measured on the held-out ones ('eps<value>' -> {'accuracy', ...,
  'fooling_ratio', 'seconds'}); with `deepfool_examples`, the iterative
  DeepFool universal perturbation (UAT's algorithm 1) is fitted on that many
  training images too ('deepfool_eps<value>'). Perturbations are saved as
  '<entry>_eps<value>.npy/.png'.
  """

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      eps: radii in 0-255 units.
      batch_size: training examples per iteration of the universal adversary.
      universal: the adversary (`UniversalConfig`, eps set per radius); default algorithm 2's.
      deepfool_examples: fit iterative DeepFool on this many training images too; 0 skips.
      deepfool_passes: at most this many passes over them (algorithm 1).
    """
    eps: tuple = ()
    batch_size: int = 16
    universal: universal_lib.UniversalConfig = universal_lib.uat_config()
    deepfool_examples: int = 0
    deepfool_passes: int = 10

    def __post_init__(self):
      if not all(isinstance(e, (int, float)) and 0 < e <= 255 for e in self.eps):
        raise ConfigError(f"universal evaluator: eps values {self.eps!r} must be numbers in (0, 255]")

  def _report(self, variables, delta, seconds) -> dict[str, Any]:
    result = evaluate_universal(self.ctx.model_fn, self.ctx.held_out(), delta, task=self.ctx.task,
                                variables=variables)
    return {**result["adversarial"], "fooling_ratio": result["fooling_ratio"], "seconds": seconds}

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    rng = self.ctx.key(self.name)
    for eps in a.eps:
      cfg = dataclasses.replace(a.universal, eps=float(eps))
      start = time.perf_counter()
      delta = universal_lib.universal_perturbation(self.ctx.model_fn, self.ctx.train_stream(a.batch_size, self.name),
                                                   rng, cfg, self.ctx.image_shape, variables=variables)
      delta = jax.block_until_ready(delta)
      yield f"eps{eps:g}", self._report(variables, delta, time.perf_counter() - start)
      save_perturbation(np.asarray(delta), self.ctx.out_dir, f"{self.name}_eps{eps:g}", eps)
      if a.deepfool_examples:
        images = next(iter(self.ctx.train_stream(a.deepfool_examples, self.name + "/deepfool")()))["image"]
        start = time.perf_counter()
        deepfool_cfg = universal_deepfool.UniversalDeepFoolConfig(eps=float(eps), max_passes=a.deepfool_passes)
        result = universal_deepfool.universal_deepfool(self.ctx.model_fn(variables), images, rng, deepfool_cfg)
        v = jax.block_until_ready(result.perturbation)
        yield f"deepfool_eps{eps:g}", self._report(variables, v, time.perf_counter() - start)
