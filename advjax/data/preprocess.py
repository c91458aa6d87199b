"""Per-example image transforms on the host, in numpy and PIL.

Each function maps one decoded image to another; random ones take a
`np.random.Generator` that the pipeline seeds from (seed, epoch, position), so
augmentation is reproducible and a resumed run sees the same crops and flips.

* CIFAR-style training: zero-pad 4 pixels on every side, take a random crop of
  the original size, flip horizontally with probability 1/2 (He et al., 2016).
* ImageNet-style evaluation: resize the shorter side to `size / 0.875`, then
  take the central `size x size` crop (the standard 224 / 256 protocol).
* ImageNet-style training: Inception random-resized crop (area fraction in
  [0.08, 1], aspect ratio in [3/4, 4/3]; Szegedy et al., 2015) resized to
  `size x size`, then a random horizontal flip.

Images are uint8 or float32 [height, width, channels]; every function returns
float32 in [0, 1].

Dense label maps (segmentation) are int [height, width], values in
[-1, num_classes) with -1 = ignore. They are never interpolated: a resized map
takes, for every output pixel, the input pixel under its centre (nearest
neighbour), so it only ever holds values of the original map.

* Fixed-size data (Cityscapes): image bilinear, labels nearest, to a target
  (height, width).
* Variable-size data (VOC): `fit_and_pad` shrinks an image whose longer side
  exceeds `size` to that side (aspect kept; smaller images are not enlarged),
  then pads bottom and right to `size x size` with zero pixels and ignore
  labels, so every annotated pixel stays in the scored map (the usual VOC
  protocol pads to 513 x 513 in the same way).
"""

import math

import numpy as np
from PIL import Image

from advjax import errors

EVAL_CROP_FRACTION = 0.875


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [h, w, c] in 0..255 (or float in [0, 1]) -> float32 [h, w, c] in [0, 1]."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  return image.astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (antialiased) resize of [h, w, c] to float32 [height, width, c] in [0, 1]."""
  if image.shape[:2] == (height, width):
    return to_float(image)
  if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
    # Decoded photos: one uint8 PIL resize is several times faster than three float ones.
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return to_float(out.reshape(height, width, image.shape[-1]))
  image = to_float(image)
  channels = [
      np.asarray(Image.fromarray(image[..., c], mode="F").resize((width, height), Image.BILINEAR))
      for c in range(image.shape[-1])
  ]
  return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True) -> np.ndarray:
  """Random crop of the zero-padded image plus random horizontal flip.

  Args:
    image: [h, w, c] uint8 or float in [0, 1].
    rng: source of the crop offset and the flip.
    pad: zero padding added on every side before cropping.
    flip: whether to flip horizontally with probability 1/2 (off for digits,
      whose mirror images are not digits).

  Returns:
    float32 [h, w, c] in [0, 1].
  """
  image = to_float(image)
  h, w = image.shape[:2]
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[top:top + h, left:left + w]
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side resized to int(size / 0.875), then the central crop.

  Args:
    image: [h, w, c] of any size, uint8 or float in [0, 1].
    size: side of the square output.

  Returns:
    float32 [size, size, c] in [0, 1].
  """
  h, w = image.shape[:2]
  short = int(size / EVAL_CROP_FRACTION)
  scale = short / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  image = resize(image, new_h, new_w)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return image[top:top + size, left:left + size]


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = (0.08, 1.0),
    ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
  """Inception-style crop of random area and aspect ratio, resized, then flipped.

  Tries `attempts` random (area, ratio) boxes; if none fits inside the image it
  falls back to the evaluation centre crop, as in the reference pipelines.

  Args:
    image: [h, w, c] of any size, uint8 or float in [0, 1].
    size: side of the square output.
    rng: source of the box and the flip.
    area_range: range of the box area as a fraction of the image area.
    ratio_range: range of the box width / height.
    attempts: number of boxes to try before falling back.

  Returns:
    float32 [size, size, c] in [0, 1].
  """
  h, w = image.shape[:2]
  log_ratio = (math.log(ratio_range[0]), math.log(ratio_range[1]))
  for _ in range(attempts):
    area = h * w * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(area * ratio)))
    crop_h = int(round(math.sqrt(area / ratio)))
    if 0 < crop_w <= w and 0 < crop_h <= h:
      top = int(rng.integers(0, h - crop_h + 1))
      left = int(rng.integers(0, w - crop_w + 1))
      out = resize(image[top:top + crop_h, left:left + crop_w], size, size)
      break
  else:
    out = center_crop(image, size)
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def resize_labels(label: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of a label map, sampling at pixel centres.

  Output pixel (i, j) takes input pixel (floor((i + 1/2) h / height),
  floor((j + 1/2) w / width)), so no new values are created.

  Args:
    label: int [h, w] label map.
    height: output height.
    width: output width.

  Returns:
    [height, width] with the dtype of `label`.
  """
  h, w = label.shape[:2]
  if (h, w) == (height, width):
    return label
  rows = ((np.arange(height) + 0.5) * h / height).astype(np.int64)
  cols = ((np.arange(width) + 0.5) * w / width).astype(np.int64)
  return label[rows[:, None], cols[None, :]]


def fit_and_pad(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Shrinks an (image, label map) pair to fit `size x size`, then pads it to that size.

  Args:
    image: [h, w, c] uint8 or float in [0, 1].
    label: int [h, w] in [-1, num_classes).
    size: side of the square output.

  Returns:
    (float32 [size, size, c] in [0, 1], int32 [size, size]); the image is
    zero and the label -1 in the padding at the bottom and right.
  """
  h, w = image.shape[:2]
  scale = min(1.0, size / max(h, w))
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  image = resize(image, new_h, new_w)
  label = resize_labels(label, new_h, new_w)
  out_image = np.zeros((size, size, image.shape[-1]), np.float32)
  out_label = np.full((size, size), -1, np.int32)
  out_image[:new_h, :new_w] = image
  out_label[:new_h, :new_w] = label
  return out_image, out_label


def check_label_map(label: np.ndarray, image_shape: tuple[int, ...], num_classes: int, where: str) -> None:
  """Raises DataError unless `label` is a [H, W] map of values in [-1, num_classes) matching the image.

  Args:
    label: the label map to check, [H, W].
    image_shape: (H, W, C) of the image it annotates.
    num_classes: number of classes.
    where: names the example in the message, e.g. "dataset 'voc2012_seg' example 12".
  """
  if label.shape != tuple(image_shape[:2]):
    raise errors.DataError(
        f"{where}: label map shape {tuple(label.shape)} does not match the image's {tuple(image_shape[:2])}")
  if label.size == 0:
    return
  low, high = int(label.min()), int(label.max())
  if low < -1 or high >= num_classes:
    value = high if high >= num_classes else low
    raise errors.DataError(f"{where}: label value {value} is outside [-1, {num_classes})")
