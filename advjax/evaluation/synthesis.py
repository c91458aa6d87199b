"""'synthesis': inpainting and generation with a segmentation model (robust-segmentation paper, secs. 5.2-5.3).

The paper judges the perceptual alignment of a segmentation model's
gradients by what PGD paints with them (`advjax.attacks.synthesis`): the
masked region of an image restored by eq. 6, and a whole image generated
for a label map by eq. 7. This evaluator runs both on the first
`num_images` held-out examples and measures the results.

Masks. Per image one square of side s = max(1, round(mask_frac * min(H, W)))
pixels centred on a foreground pixel (label > 0) drawn uniformly, shifted
inside the image where it would leave it (`synthesis.square_masks`); on the
64x64 digit canvases the default mask_frac 0.25 hides a 16x16 part of a
digit.

Randomness: split(ctx.key(entry name)) = (mask key, synthesis key); the
mask key draws the squares, the synthesis key is passed to `inpaint` and
`generate` (whose steps draw nothing from it).

Values (x the original, x' a synthesised image, m the mask, C channels):

  original / corrupted / inpaint_<constraint> / generated
      pixel_accuracy: the segmentation model's global pixel accuracy on x,
        on the start x'_0, on the inpainted and the generated images
        against y (valid pixels of all images pooled): how well PGD met its
        own target;
      masked_mse (corrupted, inpaint_*): per image
        sum_{p in m, c} (x'_pc - x_pc)^2 / (|m| C), averaged over images,
        the paper's "restore the missing pixels" measured against the truth;
        the corrupted value is the mean fill's, the baseline to beat;
      unmasked_mse (inpaint_*): the same outside the mask: 0 for 'hard',
        the drift the penalty allows for 'soft'.
  classifier (when `classifier_run` names a classification run)
      the accuracy of that independent classifier on digits cut from the
      images (below); 'original' and 'generated' over every digit of the
      images, 'original_masked', 'corrupted' and 'inpaint_<constraint>'
      over the masked digits; 'num_digits', 'num_masked_digits'.
  path: the PNG, or None without an output directory.

Digit crops (classifier proxy). The held-out images must be canvases of the
embedded digit-segmentation data (`advjax.data.embedded.mnist_seg_canvases`,
the 'mnist_seg_embedded' dataset); each is matched to its canvas by its exact
pixels (either split), which gives its layout: every placed digit's class and
the (top, left) of its 28x28 window. The crop of a digit is that window of
the image under test (x, x'_0, x' ...), exactly the region the MNIST digit
was pasted into, so it may hold strokes of an overlapping digit, as the
canvas does. A digit is masked when the mask covers at least one pixel of
its window labelled with its class (label = class + 1). The classifier
run's model must take 28x28x1 inputs (an MNIST classifier such as
runs/compare/erm/seed0); it is rebuilt from the run's config.json and its latest
checkpoint (`advjax.saved_runs.load_model`), in BatchNorm eval mode.
Anything else (another dataset, another input shape) is one ConfigError.

The PNG `<out_dir>/<entry name>.png` has one column per example (the
first `png_images`) and rows
original, ground truth (VOC colours), corrupted start, inpainted (one row per
constraint), generated; grey images are drawn as RGB, enlarged `scale`
times.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from advjax import data, saved_runs, viz
from advjax.cpu import compilation
from advjax.attacks import core, make_logits_fn, synthesis as synthesis_lib
from advjax.data import embedded
from advjax.errors import ConfigError
from advjax.evaluation import segmentation

DIGIT_SHAPE = (28, 28, 1)


@functools.partial(compilation.jit, static_argnames=("model_fn", "cfgs"))
def _synthesise(model_fn, variables, x, y, masks, rng, cfgs):
  """Start, inpainted images (one per cfg) and generated image, with the model's predictions on each."""
  fn = core.bind(model_fn, variables)
  start = synthesis_lib.start_image(x, masks, cfgs[0].fill)
  inpainted = tuple(synthesis_lib.inpaint(fn, x, masks, y, rng, cfg) for cfg in cfgs)
  generated = synthesis_lib.generate(fn, x, y, rng, cfgs[0])
  images = (x, start) + inpainted + (generated,)
  return images, tuple(jnp.argmax(fn(image), axis=-1) for image in images)


@functools.partial(compilation.jit, static_argnames=("model_fn",))
def _classify(model_fn, variables, crops):
  return jnp.argmax(model_fn(variables)(crops), axis=-1)


def masked_mse(x_syn: np.ndarray, x: np.ndarray, region: np.ndarray) -> float:
  """Mean over images of the mean squared error over the pixels (all channels) where region is 1.

  Args:
    x_syn: [n, H, W, C].
    x: [n, H, W, C].
    region: [n, H, W] of 0/1; images with an empty region are left out.

  Returns:
    The mean, or NaN if every region is empty.
  """
  region = np.asarray(region, np.float64)[..., None]
  sq = np.square(np.asarray(x_syn, np.float64) - np.asarray(x, np.float64)) * region
  count = region.sum(axis=(1, 2, 3)) * x.shape[-1]
  per_image = sq.sum(axis=(1, 2, 3))[count > 0] / count[count > 0]
  return float(per_image.mean()) if per_image.size else float("nan")


def _pixel_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
  valid = y >= 0
  return float(np.mean(pred[valid] == y[valid])) if valid.any() else float("nan")


@functools.lru_cache(maxsize=None)
def _canvas_index(split: str) -> dict[bytes, int]:
  canvases = embedded.mnist_seg_canvases(split)
  return {hashlib.sha1(np.ascontiguousarray(im, np.float32).tobytes()).digest(): i
          for i, im in enumerate(canvases.image)}


def canvas_layout(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The digit layout of embedded digit canvases, found by their exact pixels.

  Args:
    images: [n, 64, 64, 1] canvases of `embedded.mnist_seg_canvases` (either split).

  Returns:
    (classes int32 [n, M] digit class 0..9, -1 for an empty slot;
     offsets int32 [n, M, 2] (top, left) of each digit's 28x28 window).

  Raises:
    ConfigError: an image that is no embedded canvas.
  """
  mnist = embedded.mnist_arrays()
  digit_labels = {"train": mnist[1], "test": mnist[3]}
  classes, offsets = [], []
  for i, image in enumerate(np.asarray(images, np.float32)):
    key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()
    for split in ("test", "train"):
      j = _canvas_index(split).get(key)
      if j is not None:
        canvases = embedded.mnist_seg_canvases(split)
        index = canvases.digit_index[j]
        classes.append(np.where(index >= 0, digit_labels[split][np.maximum(index, 0)], -1))
        offsets.append(canvases.offset[j])
        break
    else:
      raise ConfigError(f"synthesis evaluator: held-out image {i} is not one of the embedded digit canvases "
                        "(dataset 'mnist_seg_embedded' at its native size); classifier_run needs their layout")
  return np.asarray(classes, np.int32), np.asarray(offsets, np.int32)


def digit_crops(images: np.ndarray, offsets: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """The 28x28 windows of the placed digits, in (image, slot) order, empty slots skipped.

  Args:
    images: [n, H, W, C].
    offsets: [n, M, 2] (top, left).
    classes: [n, M], -1 for an empty slot.

  Returns:
    [number of digits, 28, 28, C].
  """
  h, w = DIGIT_SHAPE[:2]
  return np.stack([images[i, t:t + h, l:l + w] for i, k in zip(*np.nonzero(classes >= 0))
                   for t, l in [offsets[i, k]]])


def masked_digits(masks: np.ndarray, labels: np.ndarray, offsets: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """Whether the mask covers a pixel of each digit's window labelled with its class (digit order of `digit_crops`)."""
  h, w = DIGIT_SHAPE[:2]
  out = []
  for i, k in zip(*np.nonzero(classes >= 0)):
    t, l = offsets[i, k]
    window = (masks[i, t:t + h, l:l + w] > 0) & (labels[i, t:t + h, l:l + w] == classes[i, k] + 1)
    out.append(bool(window.any()))
  return np.asarray(out, bool)


class Synthesis(segmentation._SegmentationEvaluator):  # pylint: disable=protected-access
  """'synthesis': inpainting (eq. 6) and generation (eq. 7) on held-out examples, their proxies and a PNG."""

  kind = "synthesis"

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      num_images: the first this many held-out examples.
      mask_frac: side of the square mask as a fraction of min(H, W), in (0, 1].
      constraints: inpainting runs: any of 'soft' (eq. 6), 'hard' (mask only), at least one.
      synthesis: the PGD of inpainting and generation (`SynthesisConfig`:
        num_steps, step_size in 0-255 units, step_rule 'l2' or 'sign',
        penalty, fill); its constraint is set per run of `constraints`.
      classifier_run: a classification run directory whose model scores digit
        crops (digit canvases only); '' for none.
      png_images: columns of the PNG, the first this many images.
      scale: integer enlargement of the PNG.
    """
    num_images: int = 8
    mask_frac: float = 0.25
    constraints: tuple = ("soft", "hard")
    synthesis: synthesis_lib.SynthesisConfig = synthesis_lib.SynthesisConfig()
    classifier_run: str = ""
    png_images: int = 8
    scale: int = 2

    RENAMED: ClassVar[dict[str, str]] = {"steps": "synthesis.num_steps", "step_size": "synthesis.step_size",
                                         "step_rule": "synthesis.step_rule", "penalty": "synthesis.penalty",
                                         "fill": "synthesis.fill"}

    def __post_init__(self):
      def fail(field, why):
        raise ConfigError(f"synthesis evaluator: {field}={getattr(self, field)!r} {why}")

      if self.num_images < 1:
        fail("num_images", "must be >= 1")
      if not (math.isfinite(self.mask_frac) and 0 < self.mask_frac <= 1):
        fail("mask_frac", "must be in (0, 1]")
      if not self.constraints or len(set(self.constraints)) != len(self.constraints) or any(
          c not in synthesis_lib.CONSTRAINTS for c in self.constraints):
        fail("constraints", f"must be distinct names from {', '.join(synthesis_lib.CONSTRAINTS)}, at least one")
      if self.scale < 1:
        fail("scale", "must be >= 1")
      if self.png_images < 1:
        fail("png_images", "must be >= 1")

    def configs(self) -> tuple[synthesis_lib.SynthesisConfig, ...]:
      """One `SynthesisConfig` per constraint, in the order of `constraints`."""
      return tuple(dataclasses.replace(self.synthesis, constraint=c) for c in self.constraints)

  def mask_side(self, height: int, width: int) -> int:
    """s = max(1, round(mask_frac * min(H, W)))."""
    return max(1, int(round(self.args.mask_frac * min(height, width))))

  def run(self, variables) -> Iterator[tuple[str, Any]]:
    a = self.args
    x, y = segmentation.first_examples(self.ctx.held_out(), a.num_images)
    if not len(x):
      raise ConfigError(f"config.evals.{self.name}: no held-out examples to synthesise from")
    k_mask, k_syn = jax.random.split(self.ctx.key(self.name))
    side = self.mask_side(*x.shape[1:3])
    masks = synthesis_lib.square_masks(k_mask, jnp.asarray(y), side)
    images, preds = jax.device_get(_synthesise(self.ctx.model_fn, variables, jnp.asarray(x), jnp.asarray(y),
                                               masks, k_syn, a.configs()))
    masks = np.asarray(jax.device_get(masks))
    names = ("original", "corrupted") + tuple(f"inpaint_{c}" for c in a.constraints) + ("generated",)
    images, preds = dict(zip(names, images)), dict(zip(names, preds))
    yield "num_images", len(x)
    yield "mask_side", side
    for name in names:
      values = {"pixel_accuracy": _pixel_accuracy(preds[name], y)}
      if name == "corrupted" or name.startswith("inpaint_"):
        values["masked_mse"] = masked_mse(images[name], x, masks)
      if name.startswith("inpaint_"):
        values["unmasked_mse"] = masked_mse(images[name], x, 1.0 - masks)
      yield name, values
    if a.classifier_run:
      yield "classifier", self.classifier_accuracy(images, masks, y)
    path = None
    if self.ctx.out_dir is not None:
      path = os.path.join(self.ctx.out_dir, f"{self.name}.png")
      shown = slice(0, a.png_images)
      rgb = [np.repeat(images[n][shown], 3 // images[n].shape[-1], axis=-1) for n in names]
      rows = rgb[:1] + [segmentation_colours(y[shown])] + rgb[1:]
      viz.save_image_grid(rows, path, scale=a.scale)
    yield "path", path

  def classifier_accuracy(self, images: dict[str, np.ndarray], masks: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The classifier run's accuracy on the digit crops of each image set (module docstring)."""
    model, variables, info = saved_runs.load_model(self.args.classifier_run,
                                                   f"config.evals.{self.name}.classifier_run")
    if tuple(info.image_shape) != DIGIT_SHAPE:
      raise ConfigError(f"synthesis evaluator: classifier_run {self.args.classifier_run!r} takes images of shape "
                        f"{tuple(info.image_shape)}, but the digit crops are {DIGIT_SHAPE}")
    classes, offsets = canvas_layout(images["original"])
    truth = classes[classes >= 0]
    hit = masked_digits(masks, y, offsets, classes)
    builder = functools.partial(make_logits_fn, model)

    def accuracy(name, keep):
      if not keep.any():
        return None
      pred = np.asarray(_classify(builder, variables, jnp.asarray(digit_crops(images[name], offsets, classes))))
      return float(np.mean(pred[keep] == truth[keep]))

    every = np.ones_like(hit)
    out = {"num_digits": int(len(truth)), "num_masked_digits": int(hit.sum()),
           "original": accuracy("original", every), "generated": accuracy("generated", every),
           "original_masked": accuracy("original", hit), "corrupted": accuracy("corrupted", hit)}
    for name in images:
      if name.startswith("inpaint_"):
        out[name] = accuracy(name, hit)
    return out


def segmentation_colours(labels: np.ndarray) -> np.ndarray:
  """Label maps [n, H, W] as VOC-coloured float images [n, H, W, 3] in [0, 1]."""
  return data.colorize(labels).astype(np.float32) / 255.0
