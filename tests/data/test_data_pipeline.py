"""Deterministic training batches and padded evaluation batches on embedded data."""

import ml_collections
import numpy as np
import pytest

from advjax import errors
from advjax.data import embedded, pipeline


def _cfg(name="mnist_embedded", **overrides):
  fields = dict(name=name, data_dir="", image_size=0, class_subset=0, augment=False)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_info():
  info = pipeline.get_info(_cfg())
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (10, (28, 28, 1), 4000, 1000)
  assert len(info.mean) == 1 and 0.1 < info.mean[0] < 0.2 and not info.dense_labels
  digits = pipeline.get_info(_cfg("digits_embedded", image_size=16, class_subset=4))
  assert (digits.num_classes, digits.image_shape) == (4, (16, 16, 1))
  assert 500 < digits.num_train < 640


@pytest.mark.parametrize("augment", [False, True])
def test_train_batches_are_deterministic_and_change(augment):
  cfg = _cfg(augment=augment)
  source = pipeline.make_train_source(cfg, global_batch_size=64, seed=3)
  again = pipeline.make_train_source(cfg, global_batch_size=64, seed=3)
  assert source.steps_per_epoch == 62
  batch = source.batch(5)
  assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  _assert_same(batch, again.batch(5))
  assert not np.array_equal(batch["image"], source.batch(6)["image"])
  other_seed = pipeline.make_train_source(cfg, global_batch_size=64, seed=4)
  assert not np.array_equal(batch["label"], other_seed.batch(5)["label"])


def test_each_epoch_is_a_new_permutation_of_distinct_examples():
  cfg = _cfg("digits_embedded")
  source = pipeline.make_train_source(cfg, global_batch_size=100, seed=0)
  spe = source.steps_per_epoch
  assert spe == 14

  def epoch_images(e):
    return np.concatenate([source.batch(e * spe + s)["image"] for s in range(spe)]).reshape(spe * 100, -1)

  first, second = epoch_images(0), epoch_images(1)
  # Within an epoch no example repeats; the order changes between epochs.
  assert len({row.tobytes() for row in first}) == spe * 100
  assert not np.array_equal(first[:100], second[:100])


def test_augmentation_changes_images_but_not_labels():
  plain = pipeline.make_train_source(_cfg(), global_batch_size=32, seed=1).batch(2)
  augmented = pipeline.make_train_source(_cfg(augment=True), global_batch_size=32, seed=1).batch(2)
  np.testing.assert_array_equal(plain["label"], augmented["label"])
  assert not np.array_equal(plain["image"], augmented["image"])
  np.testing.assert_allclose(plain["image"].sum(), augmented["image"].sum(), rtol=0.1)


@pytest.mark.parametrize("step", [0, 70])
def test_process_slices_concatenate_to_global_batch(step):
  cfg = _cfg(augment=True)
  whole = pipeline.make_train_source(cfg, global_batch_size=64, seed=7).batch(step)
  parts = [
      pipeline.make_train_source(
          cfg, global_batch_size=64, seed=7, process_index=p, process_count=2).batch(step)
      for p in range(2)
  ]
  assert parts[0]["image"].shape == (32, 28, 28, 1)
  _assert_same(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})


def test_iterate_equals_batch():
  source = pipeline.make_train_source(_cfg("digits_embedded", augment=True), global_batch_size=50, seed=2)
  for offset, batch in enumerate(source.iterate(start_step=27, num_steps=3, num_threads=2)):
    _assert_same(batch, source.batch(27 + offset))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_split_once_with_padding_masked(process_count):
  cfg = _cfg("digits_embedded")
  _, _, test_x, test_y = embedded.digits_arrays()
  per_process = [
      list(pipeline.make_eval_batches(
          cfg, "test", batch_size=64, process_index=p, process_count=process_count))
      for p in range(process_count)
  ]
  assert all(len(batches) == 6 for batches in per_process)  # ceil(360 / 64)
  # Batch k of every process, in process order, is global batch k.
  global_batches = [{k: np.concatenate([b[k] for b in group]) for k in group[0]} for group in zip(*per_process)]
  rows = {k: np.concatenate([b[k] for b in global_batches]) for k in ("image", "label", "mask")}
  assert rows["image"].shape == (384, 8, 8, 1) and rows["mask"].dtype == np.float32
  assert rows["mask"].sum() == 360
  # Global order is the split's order, so padding is exactly the tail.
  np.testing.assert_array_equal(rows["mask"], np.r_[np.ones(360), np.zeros(24)])
  np.testing.assert_array_equal(rows["image"][:360], test_x)
  np.testing.assert_array_equal(rows["label"][:360], test_y)
  assert not rows["image"][360:].any()


def test_bad_config_raises_config_error():
  with pytest.raises(errors.ConfigError, match="unknown dataset 'svhn'"):
    pipeline.get_info(_cfg("svhn"))
  with pytest.raises(errors.ConfigError, match="unknown dataset"):
    pipeline.make_train_source(_cfg("svhn"), global_batch_size=8, seed=0)
  with pytest.raises(errors.ConfigError, match="multiple of process_count"):
    pipeline.make_train_source(_cfg(), global_batch_size=63, seed=0, process_count=2)
  with pytest.raises(errors.ConfigError, match="class_subset"):
    pipeline.get_info(_cfg(class_subset=11))
