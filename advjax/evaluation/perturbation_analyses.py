"""The universality paper's analyses of a run's epochs: six evaluators over `EvalContext.history()`.

"Universality, robustness, and detectability of adversarial perturbations
under adversarial training" follows one classifier through adversarial
training and studies the perturbations that still fool the model of each
epoch. The pure functions live in `advjax.analysis`; these evaluators feed
them the run's checkpoints and the held-out and training data, write the
paper's figures to `<out_dir>/<entry>*.png` and yield the numbers:

  'stability'         P_{t1,t2}(x) = p(y | x + xi_t1; theta_t2) for BI
                      perturbations (sec. 3.1, appendix B): mean MaxMin and
                      MinMax, the fraction of inputs in each corner of the
                      MaxMin-vs-MinMax scatter (robust / stable / oscillating;
                      the fourth corner is empty since MaxMin >= MinMax), the
                      white-box accuracy per epoch; scatter PNG
  'sharedness'        sharedness ratio per epoch (appendix C: each BI
                      perturbation of P held-out inputs applied to N other
                      held-out inputs), and figure 2's log-log Pearson r between
                      J^Delta_current,train (epoch 0's perturbations on training
                      inputs) and J^Delta_future,test (on their own inputs at
                      the later epochs); line PNG and cost-change scatter
  'universal_epochs'  appendix D's universal perturbation per epoch (signs of K
                      mini-batch gradients averaged), fitted on training
                      batches; accuracy of every epoch's model under every
                      epoch's perturbation on held-out data (its diagonal is
                      figure 3's "respective epoch" line); PNG of the amplified
                      perturbations, `.npy` of the raw ones
  'destruction'       Kurakin et al.'s destruction rate per adversary (BI,
                      FGSM, DeepFool), transform, strength and epoch (sec. 3.3,
                      appendix F); PNG of rate against strength, one panel per
                      adversary and transform, one line per epoch
  'detection'         a Metzen-style detector on raw images trained per epoch
                      (BI examples of training inputs), the detection-accuracy
                      matrix (detector epoch x perturbation epoch) on held-out
                      inputs, and per detector a universal perturbation
                      maximising its output for `universal_target` (figure 7:
                      'adversarial'), with the detector's mean probability of
                      'adversarial' under it; matrix PNG and perturbation PNG
  'transfer'          accuracy of the model of epoch j on the BI examples of
                      epoch i (appendix A); matrix PNG

Epochs are positions in the history: epoch 0 is the model the run started
from (`config.init_checkpoint`, see `Experiment.history`), epoch t the t-th
checkpoint after it; with a checkpoint per epoch these are the paper's
epochs. `epochs` (an argument of every evaluator) restricts the analysis to
some of them, as the paper does on CIFAR-10 (0, 1, 5, 15, 51, 251); results
list them as 'epochs' with their training 'steps', and every per-epoch list
follows that order. Sizes are in 0-255 pixel units; the defaults are the
paper's CIFAR-10 settings (configs/universality_digits.py scales them for the
digits). Every evaluator draws its randomness from its entry's key. The
evaluators run on one process (the data are gathered to the host).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import numpy as np
import optax

from advjax import viz
from advjax.analysis import destruction, detection, epochs as epochs_lib, sharedness, stability, transfer
from advjax.analysis import universal_epochs
from advjax.attacks import deepfool as deepfool_lib
from advjax.attacks import pgd as pgd_lib
from advjax.attacks import universal as universal_lib
from advjax.errors import ConfigError, DataError
from advjax.evaluation import base

DETECTOR_TARGETS = {"adversarial": detection.ADVERSARIAL, "clean": detection.CLEAN}


@dataclasses.dataclass(frozen=True)
class EpochArgs:
  """Arguments every analysis takes.

  Attributes:
    epochs: history positions to analyse (0 = the starting model); () for all.
    max_examples: held-out inputs analysed (the first ones).
    batch_size: examples per jitted call.
    attack: the basic iterative (BI) adversary (`pgd.AttackConfig`); the
      paper's L-inf eps 4, alpha 1 and 10 iterations from a zero start.
  """
  epochs: tuple = ()
  max_examples: int = 256
  batch_size: int = 256
  attack: pgd_lib.AttackConfig = pgd_lib.bim(eps=4.0, step_size=1.0, num_steps=10)

  RENAMED: ClassVar[dict[str, str]] = {"eps": "attack.eps", "step_size": "attack.step_size",
                                       "steps": "attack.num_steps"}

  def __post_init__(self):
    if self.max_examples < 1 or self.batch_size < 1 or self.attack.num_steps < 1:
      raise ConfigError("max_examples, batch_size and attack.num_steps must be >= 1")
    if not 0 < self.attack.eps <= 255 or self.attack.step_size <= 0:
      raise ConfigError(f"attack.eps={self.attack.eps!r} must be in (0, 255] and "
                        f"attack.step_size={self.attack.step_size!r} > 0")
    if not all(isinstance(e, int) and e >= 0 for e in self.epochs):
      raise ConfigError(f"epochs={self.epochs!r}: history positions, ints >= 0")


class EpochEvaluator(base.Evaluator):
  """Shared parts of the analyses: the epochs' models, data as host arrays, the BI adversary."""

  Args = EpochArgs

  def epochs(self) -> tuple[list[int], list[int], list[Any], list[epochs_lib.LogitsFn]]:
    """(history positions, steps, variables, logits_fns) of the analysed epochs."""
    if self.ctx.history is None:
      raise ConfigError(f"config.evals.{self.name}: needs the run's checkpoints (run it through eval.py "
                        "with a workdir)")
    history = self.ctx.history()
    chosen = list(self.args.epochs) or list(range(len(history)))
    bad = [e for e in chosen if e >= len(history)]
    if bad:
      raise ConfigError(f"config.evals.{self.name}.epochs: {bad} beyond the run's {len(history)} "
                        "epochs (position 0 is the starting model)")
    variables = [history[e][1] for e in chosen]
    return chosen, [int(history[e][0]) for e in chosen], variables, [self.ctx.model_fn(v) for v in variables]

  def held_out(self, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` real held-out examples: x [n, H, W, C] in [0, 1], y [n]."""
    xs, ys, seen = [], [], 0
    for batch in self.ctx.held_out():
      real = np.asarray(jax.device_get(batch["mask"])) > 0
      xs.append(np.asarray(jax.device_get(batch["image"]))[real])
      ys.append(np.asarray(jax.device_get(batch["label"]))[real])
      seen += int(real.sum())
      if seen >= limit:
        break
    x, y = np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]
    if len(x) < limit:
      raise DataError(f"config.evals.{self.name}: needs {limit} held-out examples, the data has {len(x)} "
                      "(see config.eval.num_examples)")
    return x, y

  def training(self, count: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` un-augmented training examples (one batch of the named stream) as host arrays."""
    batch = next(iter(self.ctx.train_stream(count, f"{self.name}/{name}")()))
    return np.asarray(jax.device_get(batch["image"])), np.asarray(jax.device_get(batch["label"]))

  def bi(self) -> pgd_lib.AttackConfig:
    """The basic iterative adversary of the arguments."""
    return self.args.attack

  def path(self, suffix: str = "") -> str | None:
    """`<out_dir>/<entry><suffix>.png` on process 0, else None (nothing is written)."""
    if self.ctx.out_dir is None or jax.process_index() != 0:
      return None
    return os.path.join(self.ctx.out_dir, f"{self.name}{suffix}.png")

  def header(self, chosen, steps, num_examples) -> Iterator[tuple[str, Any]]:
    yield "epochs", chosen
    yield "steps", steps
    yield "num_examples", int(num_examples)


def _floats(a) -> Any:
  """NumPy values as JSON-ready floats (NaN -> None), nested lists for arrays."""
  a = np.asarray(a, np.float64)
  if a.ndim == 0:
    return None if np.isnan(a) else float(a)
  return [_floats(v) for v in a]


def _row_means(rates: np.ndarray) -> list:
  """Mean of each row's finite entries (None for a row without any: no effective example)."""
  return [float(np.mean(r[np.isfinite(r)])) if np.isfinite(r).any() else None for r in np.asarray(rates)]


class Stability(EpochEvaluator):
  """'stability': temporal stability profiles, MaxMin, MinMax and their scatter (see the module docstring)."""

  @dataclasses.dataclass(frozen=True)
  class Args(EpochArgs):
    """Attributes (besides `EpochArgs`'):
      threshold: true-class probability separating low from high in the scatter's corners.
    """
    threshold: float = 0.5

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, _, fns = self.epochs()
    x, y = self.held_out(a.max_examples)
    sets = epochs_lib.per_epoch_adversarial(fns, x, y, self.ctx.key(self.name), self.bi(), a.batch_size)
    probs, correct = epochs_lib.cross_evaluate(fns, sets, y, a.batch_size)
    profiles = np.transpose(probs, (2, 0, 1))  # = stability.stability_profiles(fns, sets, y)
    scatter = stability.scatter_data(profiles, a.threshold)
    yield from self.header(chosen, steps, len(y))
    yield "max_min_mean", float(scatter.max_min.mean())
    yield "min_max_mean", float(scatter.min_max.mean())
    for i, category in enumerate(stability.CATEGORIES):
      yield f"fraction_{category}", float(np.mean(scatter.category == i))
    yield "white_box_accuracy", _floats(np.diagonal(correct.mean(axis=2)))
    path = self.path()
    if path:
      viz.plot_scatter(scatter.min_max, scatter.max_min, path, groups=scatter.category,
                       group_names=stability.CATEGORIES, xlabel="MinMax", ylabel="MaxMin", diagonal=True,
                       limits=(-0.02, 1.02),
                       title=f"temporal stability, epochs {chosen[0]}..{chosen[-1]}, {len(y)} inputs")
    yield "path", path


class Transfer(EpochEvaluator):
  """'transfer': accuracy of epoch j's model on epoch i's BI examples (appendix A)."""

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, _, fns = self.epochs()
    x, y = self.held_out(a.max_examples)
    sets = epochs_lib.per_epoch_adversarial(fns, x, y, self.ctx.key(self.name), self.bi(), a.batch_size)
    matrix = transfer.transfer_matrix(fns, sets, y, a.batch_size)
    off = ~np.eye(len(chosen), dtype=bool)
    yield from self.header(chosen, steps, len(y))
    yield "accuracy", _floats(matrix)
    yield "white_box_accuracy", _floats(np.diagonal(matrix))
    yield "black_box_accuracy_mean", float(matrix[off].mean()) if off.any() else None
    path = self.path()
    if path:
      viz.plot_matrix(matrix, path, row_labels=chosen, col_labels=chosen, xlabel="model epoch j",
                      ylabel="perturbation epoch i", title="accuracy on BI examples of epoch i (%)")
    yield "path", path


class Sharedness(EpochEvaluator):
  """'sharedness': sharedness ratio per epoch and the J^Delta log-log correlation (appendix C, figure 2)."""

  @dataclasses.dataclass(frozen=True)
  class Args(EpochArgs):
    """Attributes (besides `EpochArgs'`; `max_examples` is P, the perturbed inputs):
      num_other: N, the other held-out inputs each perturbation is applied to
        (held-out positions P .. P + N; the paper: P = 1024, N = 5000).
      num_train: training inputs of J^Delta_current,train.
      future_epochs: history positions of J^Delta_future,test (the subset T);
        () = every analysed epoch after the first.
      chunk_size: perturbations evaluated together.
    """
    num_other: int = 5000
    num_train: int = 1024
    future_epochs: tuple = ()
    chunk_size: int = 8

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, _, fns = self.epochs()
    x_all, y_all = self.held_out(a.max_examples + a.num_other)
    x, y = x_all[:a.max_examples], y_all[:a.max_examples]
    x_other, y_other = x_all[a.max_examples:], y_all[a.max_examples:]
    sets = epochs_lib.per_epoch_adversarial(fns, x, y, self.ctx.key(self.name), self.bi(), a.batch_size)
    perturbations = sets - x[None]
    fractions = sharedness.sharedness_per_epoch(fns, perturbations, x_other, y_other,
                                                chunk_size=a.chunk_size, input_chunk_size=a.batch_size)
    summary = sharedness.summarize_sharedness(fractions)
    yield from self.header(chosen, steps, len(y))
    yield "num_other", int(len(y_other))
    yield "sharedness_mean", _floats(summary.mean)
    yield "sharedness_min", _floats(summary.min)
    yield "sharedness_max", _floats(summary.max)
    yield "shared_fraction", _floats(summary.shared_fraction)
    future = [chosen.index(e) for e in a.future_epochs if e in chosen] if a.future_epochs else (
        list(range(1, len(chosen))))
    r, used, corr = None, 0, None
    if future:
      x_train, y_train = self.training(a.num_train, "train")
      try:
        corr = sharedness.sharedness_stability_correlation(
            fns[0], [fns[i] for i in future], x, perturbations[0], y, x_train, y_train,
            chunk_size=a.chunk_size, input_chunk_size=a.batch_size, batch_size=a.batch_size)
        r, used = corr.r, corr.num_used
      except DataError:
        # Fewer than 3 perturbations raise the cost on both sides: no log-log correlation.
        corr = None
    yield "cost_change_r", r
    yield "cost_change_pairs", int(used)
    path = self.path()
    if path:
      viz.plot_lines([{"x": chosen, "series": {"mean": 100 * summary.mean, "min": 100 * summary.min,
                                               "max": 100 * summary.max},
                       "xlabel": "epoch", "ylabel": "effective on other inputs (%)",
                       "title": f"sharedness of BI perturbations ({len(y)} on {len(y_other)} inputs)"}], path)
      if corr is not None:
        viz.plot_scatter(corr.current, corr.future, self.path("_cost_change"), log=True,
                         xlabel="J^Delta current, train (epoch 0)", ylabel="J^Delta future, test",
                         title=f"log-log Pearson r = {corr.r:.3f} ({corr.num_used} pairs)")
    yield "path", path


class UniversalEpochs(EpochEvaluator):
  """'universal_epochs': appendix D's universal perturbation per epoch and the accuracy under it (figure 3)."""

  @dataclasses.dataclass(frozen=True)
  class Args(EpochArgs):
    """Attributes (besides `EpochArgs'`, whose `attack` is unused here):
      max_examples: held-out inputs the accuracy is measured on.
      universal: the adversary (`UniversalConfig`); default appendix D's,
        eps 10, alpha 2.5, the signs of K = 10 mini-batch gradients averaged,
        200 updates.
      universal_batch: m, training examples per mini-batch.
      amplify: display factor of the PNG (the paper's 10); 0 scales each
        perturbation to the full grey range.
    """
    universal: universal_lib.UniversalConfig = universal_lib.appendix_d_config()
    universal_batch: int = 128
    amplify: float = 0.0

    RENAMED: ClassVar[dict[str, str]] = {"eps": "universal.eps", "step_size": "universal.step_size",
                                         "grad_batches": "universal.grad_batches",
                                         "iterations": "universal.num_steps", "steps": "attack.num_steps"}

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, epoch_vars, fns = self.epochs()
    x, y = self.held_out(a.max_examples)
    cfg = a.universal
    stream = self.ctx.train_stream(a.universal_batch, self.name)
    # The builder with traced variables: one compilation serves every epoch.
    deltas = np.stack([np.asarray(universal_lib.universal_perturbation(
        self.ctx.model_fn, stream, self.ctx.key(self.name), cfg, self.ctx.image_shape, variables=v))
        for v in epoch_vars])
    matrix = universal_epochs.universal_accuracy_matrix(fns, deltas, x, y, a.batch_size)
    clean = [float(np.mean(epochs_lib.predictions(fn, x, a.batch_size) == y)) for fn in fns]
    yield from self.header(chosen, steps, len(y))
    yield "accuracy", _floats(np.diagonal(matrix))
    yield "clean_accuracy", clean
    yield "accuracy_matrix", _floats(matrix)
    yield "linf", _floats(np.abs(deltas).max(axis=(1, 2, 3)) * 255.0)
    path = self.path()
    if path:
      np.save(os.path.join(self.ctx.out_dir, f"{self.name}.npy"), deltas, allow_pickle=False)
      images = viz.amplify(deltas, factor=a.amplify or None)
      viz.save_image_grid([images], path, scale=max(1, 96 // deltas.shape[1]))
    yield "path", path


class Destruction(EpochEvaluator):
  """'destruction': destruction rates per adversary, transform, strength and epoch (sec. 3.3, appendix F)."""

  @dataclasses.dataclass(frozen=True)
  class Args(EpochArgs):
    """Attributes (besides `EpochArgs'`, whose BI settings 'bi' uses):
      adversaries: some of 'bi', 'fgsm', 'deepfool'.
      fgsm_eps: FGSM's eps, 0-255 units; 0 = `attack.eps`.
      deepfool: DeepFool (`DeepFoolConfig`: L2, at most 50 steps, overshoot 0.02).
      grids: {transform: strengths}; default `analysis.destruction.DEFAULT_GRIDS`.
      contrast_center: 'zero' (c x, Kurakin et al.) or 'mean'.
    """
    adversaries: tuple = epochs_lib.ADVERSARIES
    fgsm_eps: float = 0.0
    deepfool: deepfool_lib.DeepFoolConfig = deepfool_lib.DeepFoolConfig()
    grids: dict = dataclasses.field(default_factory=lambda: dict(destruction.DEFAULT_GRIDS))
    contrast_center: str = "zero"

    RENAMED: ClassVar[dict[str, str]] = {**EpochArgs.RENAMED, "deepfool_iterations": "deepfool.num_steps"}

    def __post_init__(self):
      super().__post_init__()
      unknown = [n for n in self.adversaries if n not in epochs_lib.ADVERSARIES]
      if unknown or not self.adversaries:
        raise ConfigError(f"adversaries={self.adversaries!r}: some of {epochs_lib.ADVERSARIES}")
      bad = [n for n in self.grids if n not in destruction.TRANSFORMS]
      if bad:
        raise ConfigError(f"grids: unknown transform(s) {bad}; known: {destruction.TRANSFORMS}")
      if self.contrast_center not in destruction.CONTRAST_CENTERS:
        raise ConfigError(f"contrast_center={self.contrast_center!r}: one of {destruction.CONTRAST_CENTERS}")

  def adversary(self, name: str) -> epochs_lib.Adversary:
    a = self.args
    if name == "bi":
      return self.bi()
    if name == "fgsm":
      return pgd_lib.fgsm(eps=float(a.fgsm_eps or a.attack.eps))
    return a.deepfool

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, _, fns = self.epochs()
    x, y = self.held_out(a.max_examples)
    grids = {name: tuple(float(s) for s in strengths) for name, strengths in a.grids.items()}
    study = destruction.destruction_study(fns, x, y, self.ctx.key(self.name),
                                          [self.adversary(n) for n in a.adversaries], grids, a.batch_size,
                                          a.contrast_center)
    yield from self.header(chosen, steps, len(y))
    yield "grids", {name: list(s) for name, s in grids.items()}
    panels = []
    for i, name in enumerate(a.adversaries):
      rates = study[str(i)]
      # Per transform: [epoch][strength] rates, and the mean over the grid per epoch.
      yield name, {**{t: _floats(rates[t]) for t in grids},
                   **{f"{t}_mean": _row_means(rates[t]) for t in grids},
                   "num_effective": [int(n) for n in rates["num_effective"]]}
      for t, strengths in grids.items():
        panels.append({"x": strengths, "series": {f"epoch {e}": 100 * rates[t][k] for k, e in enumerate(chosen)},
                       "xlabel": t, "ylabel": "destruction rate (%)", "title": f"{name}: {t}"})
    path = self.path()
    if path:
      viz.plot_lines(panels, path, columns=len(grids))
    yield "path", path


def _detector_logits(model, params):
  """Builder `params -> (x -> [batch, 2])` of a detector: a static argument with traced params."""
  return lambda x: model.apply({"params": params}, x)


class Detection(EpochEvaluator):
  """'detection': a detector per epoch, the detection matrix and a detector-driven universal perturbation."""

  @dataclasses.dataclass(frozen=True)
  class Args(EpochArgs):
    """Attributes (besides `EpochArgs'`; `max_examples` held-out inputs test the detectors):
      num_train: training inputs; each detector learns them and their BI examples.
      detector_features: widths of the detector's 3x3 convolutions (Metzen et al.: 96, 192, 192).
      detector_pools: a 2x2 max pool after each convolution or not.
      train_passes: passes over the training pairs.
      train_batch: pairs per detector step.
      learning_rate: Adam's rate.
      universal_target: 'adversarial' (figure 7: maximise p_det(adversarial))
        or 'clean' (maximise p_det(clean)); it sets the targeted universal
        adversary's target class.
      universal: that adversary (`UniversalConfig`, its `targeted` and
        `target_class` set by `universal_target`); default appendix D's, eps
        10, alpha 2.5, K = 10 mini-batches, 200 updates.
      universal_batch: m (128).
    """
    num_train: int = 1024
    detector_features: tuple = (96, 192, 192)
    detector_pools: tuple = (True, True, False)
    train_passes: int = 10
    train_batch: int = 64
    learning_rate: float = 1e-3
    universal_target: str = "adversarial"
    universal: universal_lib.UniversalConfig = universal_lib.appendix_d_config()
    universal_batch: int = 128

    RENAMED: ClassVar[dict[str, str]] = {**EpochArgs.RENAMED, "universal_eps": "universal.eps",
                                         "universal_step": "universal.step_size",
                                         "grad_batches": "universal.grad_batches", "iterations": "universal.num_steps"}

    def __post_init__(self):
      super().__post_init__()
      if self.universal_target not in DETECTOR_TARGETS:
        raise ConfigError(f"universal_target={self.universal_target!r}: one of {tuple(DETECTOR_TARGETS)}")
      if len(self.detector_features) != len(self.detector_pools) or not self.detector_features:
        raise ConfigError("detector_features and detector_pools must be non-empty and of one length")

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    del variables
    a = self.args
    chosen, steps, _, fns = self.epochs()
    x_test, y_test = self.held_out(a.max_examples)
    x_train, y_train = self.training(a.num_train, "train")
    key = self.ctx.key(self.name)
    model = detection.Detector(features=tuple(int(f) for f in a.detector_features),
                               pools=tuple(bool(p) for p in a.detector_pools))
    builder = functools.partial(_detector_logits, model)
    cfg = dataclasses.replace(a.universal, targeted=True, target_class=DETECTOR_TARGETS[a.universal_target])
    stream = self.ctx.train_stream(a.universal_batch, f"{self.name}/universal")
    adv_tests, detectors, train_accuracy, deltas, probabilities = [], [], [], [], []
    for k, fn in enumerate(fns):
      k_train, k_test, k_init, k_order, k_uni = jax.random.split(jax.random.fold_in(key, k), 5)
      adv_train = epochs_lib.adversarial_examples(fn, x_train, y_train, k_train, self.bi(), a.batch_size)
      adv_tests.append(epochs_lib.adversarial_examples(fn, x_test, y_test, k_test, self.bi(), a.batch_size))
      state = detection.create_detector_state(k_init, model, self.ctx.image_shape, optax.adam(a.learning_rate))
      state, history = detection.train_detector(state, x_train, adv_train, k_order, a.train_passes, a.train_batch)
      train_accuracy.append(history[-1]["accuracy"])
      detectors.append(detection.detector_logits_fn(state))
      delta = universal_lib.universal_perturbation(builder, stream, k_uni, cfg, self.ctx.image_shape,
                                                   variables=state.params)
      deltas.append(np.asarray(delta))
      probabilities.append(detection.mean_adversarial_probability(detectors[-1], x_test, delta, a.batch_size))
    matrix = detection.detection_matrix(detectors, x_test, np.stack(adv_tests), a.batch_size)
    yield from self.header(chosen, steps, len(y_test))
    yield "num_train", int(len(y_train))
    yield "accuracy_matrix", _floats(matrix)
    yield "accuracy", _floats(np.diagonal(matrix))
    yield "accuracy_min", float(matrix.min())
    yield "train_accuracy", [float(v) for v in train_accuracy]
    yield "universal_adversarial_probability", [float(p) for p in probabilities]
    path = self.path()
    if path:
      viz.plot_matrix(matrix, path, row_labels=chosen, col_labels=chosen, xlabel="perturbation epoch j",
                      ylabel="detector epoch i", title="detection accuracy (%)")
      images = viz.amplify(np.stack(deltas))
      viz.save_image_grid([images], self.path("_universal"), scale=max(1, 96 // images.shape[1]))
    yield "path", path
