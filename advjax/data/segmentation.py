"""Dense label maps: class tables, the VOC palette, digit canvases, VOC folders.

Segmentation data in advjax is an image float32 [H, W, C] in [0, 1] and a
label map int32 [H, W] whose pixels hold a class index in [0, num_classes) or
-1 for pixels that are not scored (void, object boundaries, padding). This
module holds what the segmentation datasets and the plotting code share:

* Class tables. `VOC_CLASS_NAMES` (21 classes, background first) and the
  Cityscapes 19 training classes. Cityscapes label PNGs hold raw ids 0..33;
  the benchmark scores 19 of those classes (Cordts et al., 2016) and treats
  the rest as void, so `CITYSCAPES_TRAIN_IDS` maps raw id r to its training
  id 0..18 and every other value of a uint8 PNG to -1.
* `voc_palette(n)`: the PASCAL VOC colour map. Class c is written in binary
  c = sum_k c_k 2^k; its bits are dealt round-robin to the three channels,
  most significant output bit first: bit 3j + i of c sets bit 7 - j of channel
  i (i = 0 red, 1 green, 2 blue). So 1 -> (128, 0, 0), 2 -> (0, 128, 0),
  8 -> (64, 0, 0), and 255 -> (224, 224, 192), the colour VOC uses for void.
* Digit canvases in the style of M2NIST: `draw_layout` deals digits onto
  canvases, `render_canvases` draws them. The image is the pixelwise maximum
  of the placed digits,

      x[p] = max_k d_k[p - o_k]    (0 where no digit covers p),

  and a pixel is labelled with the class of the digit that attains that
  maximum, plus one, where it is ink:

      y[p] = c_{k*} + 1  if x[p] > 0.5,   k* = argmax_k d_k[p - o_k];
      y[p] = 0           otherwise (background).

  On overlaps the brighter stroke wins the label (ties go to the digit placed
  first), so the label always agrees with the pixel the image shows.
* `VocDirectory`: random access to the standard `VOCdevkit/VOC2012` layout
  (JPEG images, palette-PNG class maps, ImageSets/Segmentation/*.txt).
"""

import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from advjax import errors

VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_IGNORE = 255  # Value of the boundary/void band in VOC's SegmentationClass PNGs.

CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Raw Cityscapes label ids of the 19 evaluated classes, in training-id order.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _cityscapes_train_ids() -> tuple[int, ...]:
  table = np.full(256, -1, np.int32)
  table[list(CITYSCAPES_EVAL_IDS)] = np.arange(len(CITYSCAPES_EVAL_IDS))
  return tuple(int(t) for t in table)


# CITYSCAPES_TRAIN_IDS[raw id] = training id in 0..18, or -1 (void); length 256
# so that any uint8 label PNG value can be looked up.
CITYSCAPES_TRAIN_IDS = _cityscapes_train_ids()


def voc_palette(num_classes: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map, for colour-coding label maps.

  Args:
    num_classes: number of colours, 1..256 (21 for VOC's classes; 256 also
      covers the void colour at index 255).

  Returns:
    uint8 [num_classes, 3] RGB colours; row c is the colour of class c.
  """
  if not 0 < num_classes <= 256:
    raise errors.ConfigError(f"voc_palette: num_classes={num_classes} must be in 1..256")
  c = np.arange(num_classes)
  palette = np.zeros((num_classes, 3), np.int64)
  for j in range(8):
    for channel in range(3):
      palette[:, channel] |= ((c >> (3 * j + channel)) & 1) << (7 - j)
  return palette.astype(np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
  """Label maps -> RGB images in the VOC palette; -1 gets VOC's void colour.

  Args:
    labels: int [..., height, width] with values in [-1, 255).

  Returns:
    uint8 [..., height, width, 3].
  """
  labels = np.asarray(labels)
  if labels.size and not -1 <= labels.min() <= labels.max() < VOC_IGNORE:
    raise errors.DataError(f"colorize: label values {labels.min()}..{labels.max()} are outside [-1, {VOC_IGNORE})")
  return voc_palette(256)[np.where(labels < 0, VOC_IGNORE, labels)]


class Canvases(NamedTuple):
  """Digit canvases and how they were drawn.

  Attributes:
    image: float32 [N, S, S, 1] in [0, 1], the pixelwise maximum of the digits.
    label: int32 [N, S, S]; 0 background, d + 1 where digit class d is ink.
    digit_index: int32 [N, M], the digit drawn in slot k of each canvas (an
      index into the digit pool), -1 for an empty slot. Slots are drawn in order.
    offset: int32 [N, M, 2], (top, left) of each slot's digit on the canvas;
      0 for empty slots.
  """

  image: np.ndarray
  label: np.ndarray
  digit_index: np.ndarray
  offset: np.ndarray


def draw_layout(num_digits: int, num_canvases: int, rng: np.random.Generator, *, canvas_size: int = 64,
                digit_size: int = 28, max_digits: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """Deals digits from a pool of `num_digits` onto canvases at random positions.

  The draws, in order: the number of digits of each canvas, uniform in
  1..max_digits; then successive random permutations of the pool, concatenated
  and cut to the P placements needed, dealt to the canvases' slots in row-major
  order, so every digit is used floor(P / num_digits) or ceil(P / num_digits)
  times; then each slot's (top, left), uniform in 0..canvas_size - digit_size.

  Args:
    num_digits: size of the digit pool, D.
    num_canvases: N.
    rng: the only source of randomness.
    canvas_size: side S of the square canvas.
    digit_size: side of the square digit images.
    max_digits: M, the most digits on one canvas.

  Returns:
    (digit_index int32 [N, M] in [0, D) or -1 for empty slots,
     offset int32 [N, M, 2] (top, left), 0 for empty slots).
  """
  if digit_size > canvas_size:
    raise errors.ConfigError(f"digit size {digit_size} exceeds canvas size {canvas_size}")
  counts = rng.integers(1, max_digits + 1, size=num_canvases)
  used = np.arange(max_digits) < counts[:, None]
  placements = int(used.sum())
  decks = -(-placements // num_digits)
  deck = np.concatenate([rng.permutation(num_digits) for _ in range(decks)])[:placements]
  offset = rng.integers(0, canvas_size - digit_size + 1, size=(num_canvases, max_digits, 2))
  digit_index = np.full((num_canvases, max_digits), -1, np.int32)
  digit_index[used] = deck
  return digit_index, np.where(used[..., None], offset, 0).astype(np.int32)


def render_canvases(digits: np.ndarray, digit_labels: np.ndarray, digit_index: np.ndarray,
                    offset: np.ndarray, canvas_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Draws the canvases of a layout: max-composited image and its label map.

  Vectorised over canvases, in blocks of 256 that stay in cache: one scatter
  per slot, then the slot's digit takes over the pixels where it is strictly
  brighter than everything drawn before.

  Args:
    digits: float32 [D, h, w, 1] in [0, 1], the digit pool.
    digit_labels: int [D] in 0..9, the pool's classes.
    digit_index: int [N, M], pool index per slot, -1 for empty slots.
    offset: int [N, M, 2], (top, left) per slot.
    canvas_size: side S of the canvas.

  Returns:
    (image float32 [N, S, S, 1] in [0, 1], label int32 [N, S, S]); label is
    digit class + 1 where the image exceeds 0.5 (the brightest digit's class,
    the first placed on ties), 0 elsewhere.
  """
  h, w = digits.shape[1:3]
  filled = digit_index >= 0
  if np.any(offset[filled] < 0) or np.any(offset[filled] + (h, w) > canvas_size):
    raise ValueError(f"digit offsets must keep the {h}x{w} digits inside the {canvas_size}x{canvas_size} canvas")
  classes = np.where(filled, np.asarray(digit_labels, np.int32)[np.maximum(digit_index, 0)] + 1, 0)
  block = 256
  parts = [_render_block(digits, classes[i:i + block], digit_index[i:i + block], offset[i:i + block], canvas_size)
           for i in range(0, len(digit_index), block)]
  image = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, canvas_size, canvas_size), np.float32)
  label = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, canvas_size, canvas_size), np.int32)
  return image[..., None], label


def _render_block(digits, classes, digit_index, offset, canvas_size):
  num, slots = digit_index.shape
  h, w = digits.shape[1:3]
  image = np.zeros((num, canvas_size, canvas_size), np.float32)
  owner = np.zeros((num, canvas_size, canvas_size), np.int32)
  layer = np.empty_like(image)
  rows = offset[..., 0, None] + np.arange(h)
  cols = offset[..., 1, None] + np.arange(w)
  for k in range(slots):
    active = np.flatnonzero(digit_index[:, k] >= 0)
    layer.fill(0.0)
    layer[active[:, None, None], rows[active, k][:, :, None], cols[active, k][:, None, :]] = (
        digits[digit_index[active, k], ..., 0])
    brighter = layer > image
    np.copyto(owner, classes[:, k, None, None], where=brighter)
    np.maximum(image, layer, out=image)
  return image, np.where(image > 0.5, owner, 0).astype(np.int32)


def compose_canvases(digits: np.ndarray, digit_labels: np.ndarray, num_canvases: int, rng: np.random.Generator,
                     *, canvas_size: int = 64, max_digits: int = 3) -> Canvases:
  """Random canvases of 1..max_digits digits from one pool (`draw_layout` + `render_canvases`).

  Args:
    digits: float32 [D, h, w, 1] in [0, 1].
    digit_labels: int [D] in 0..9.
    num_canvases: N.
    rng: the only source of randomness.
    canvas_size: side S of the canvas.
    max_digits: M, the most digits per canvas.

  Returns:
    The Canvases (image [N, S, S, 1], label [N, S, S], digit_index [N, M],
    offset [N, M, 2]).
  """
  digit_index, offset = draw_layout(
      len(digits), num_canvases, rng, canvas_size=canvas_size, digit_size=digits.shape[1], max_digits=max_digits)
  image, label = render_canvases(digits, digit_labels, digit_index, offset, canvas_size)
  return Canvases(image, label, digit_index, offset)


class VocDirectory:
  """Random access to one split of a PASCAL VOC segmentation folder.

  Reads `root/ImageSets/Segmentation/<split>.txt` (one image id a line), and
  for example i the image `root/JPEGImages/<id>.jpg` and the class map
  `root/SegmentationClass/<id>.png`, a palette PNG whose pixel values are
  class indices (0..20, 255 on object boundaries and void).

  Example i is dict(image=uint8 [H, W, 3], label=uint8 [H, W] raw palette
  indices, id=str); mapping 255 to -1 is left to the dataset's preprocess.
  """

  def __init__(self, root: str, split: str):
    self.root = root
    list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(list_file):
      raise errors.DataError(f"VOC folder {root!r} has no split {split!r} (looked for {list_file})")
    with open(list_file) as f:
      self.ids = tuple(line.split()[0] for line in f if line.strip())

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, i: int) -> dict:
    image_id = self.ids[i]
    image_path = os.path.join(self.root, "JPEGImages", f"{image_id}.jpg")
    label_path = os.path.join(self.root, "SegmentationClass", f"{image_id}.png")
    try:
      with Image.open(image_path) as pil:
        image = np.asarray(pil.convert("RGB"))
      with Image.open(label_path) as pil:
        if pil.mode not in ("P", "L"):
          raise errors.DataError(f"VOC label {label_path!r} has PIL mode {pil.mode!r}; "
                                 "expected a palette ('P') or 'L' PNG of class indices")
        label = np.asarray(pil)
    except OSError as e:
      raise errors.DataError(f"VOC example {image_id!r} in {self.root!r} cannot be read: {e}") from e
    return {"image": image, "label": label, "id": image_id}
