"""Embedded real data: the fixed MNIST and digits splits, and the bundled photos."""

import hashlib

import numpy as np

from advjax.data import embedded

# The split is part of the library's contract: results on the embedded data are
# only comparable across versions if these never change.
MNIST_TRAIN_SHA256 = "59677e7e09fe831b0b76d5740e92b825b2d8b4ce4c4f8877e8fb4de490f7d668"
DIGITS_TRAIN_SHA256 = "b79459caf766a0e28a16cb11a18ea76320170d9a77730f154a1b811e563aa225"


def _sha(images: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def test_mnist_shapes_range_and_real_images():
  train_x, train_y, test_x, test_y = embedded.mnist_arrays()
  assert train_x.shape == (4000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  assert train_x.min() == 0.0 and train_x.max() == 1.0 and test_x.max() == 1.0
  # Real digits: most pixels are background, each image has ink, images differ.
  assert 0.05 < train_x.mean() < 0.25
  assert np.all(train_x.reshape(4000, -1).max(axis=1) > 0.5)
  assert np.std(train_x, axis=0).max() > 0.3


def test_mnist_split_is_400_100_per_class_and_disjoint():
  train_x, train_y, test_x, test_y = embedded.mnist_arrays()
  np.testing.assert_array_equal(np.bincount(train_y), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test_y), [100] * 10)
  # Shuffled, not sorted by class.
  assert len(set(train_y[:20].tolist())) > 3
  train_keys = {row.tobytes() for row in train_x}
  assert len(train_keys) == 4000
  assert not any(row.tobytes() in train_keys for row in test_x)


def test_mnist_split_is_fixed():
  first = _sha(embedded.mnist_arrays()[0][:8])
  embedded.mnist_arrays.cache_clear()
  assert _sha(embedded.mnist_arrays()[0][:8]) == first == MNIST_TRAIN_SHA256


def test_digits_split_and_range():
  train_x, train_y, test_x, test_y = embedded.digits_arrays()
  assert train_x.shape == (1437, 8, 8, 1) and test_x.shape == (360, 8, 8, 1)
  assert train_x.dtype == np.float32 and test_y.dtype == np.int32
  assert train_x.min() == 0.0 and train_x.max() == 1.0
  assert set(np.unique(train_y)) == set(range(10))
  train_keys = {row.tobytes() for row in train_x}
  assert not any(row.tobytes() in train_keys for row in test_x)
  assert _sha(train_x[:8]) == DIGITS_TRAIN_SHA256


def test_photos_load_offline_in_unit_range():
  photos = embedded.photos()
  assert set(photos) == {"astronaut", "coffee", "chelsea", "rocket", "china", "flower"}
  for name, image in photos.items():
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3, name
    assert image.min() >= 0.0 and image.max() <= 1.0, name
    assert image.std() > 0.1, name
  assert photos["astronaut"].shape == (512, 512, 3)


def test_cached_arrays_are_read_only():
  train_x = embedded.mnist_arrays()[0]
  assert not train_x.flags.writeable
  assert not embedded.photos()["coffee"].flags.writeable
