"""The tfds path: mocked datasets through the real pipeline, and missing datasets."""

import os
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import errors
from advjax.data import pipeline


def _cfg(name, data_dir="", **overrides):
  fields = dict(name=name, data_dir=data_dir, image_size=0, class_subset=0, augment=True)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.mark.parametrize(
    "name, overrides, shape, num_classes",
    [
        ("cifar10", {}, (32, 32, 3), 10),
        ("mnist", {}, (28, 28, 1), 10),
        ("imagenet2012", {"image_size": 48, "class_subset": 500}, (48, 48, 3), 500),
    ],
)
def test_mock_tfds_batches(name, overrides, shape, num_classes):
  cfg = _cfg(name, **overrides)
  # mock_data ignores data_dir and serves random examples without any files.
  with tfds.testing.mock_data(num_examples=24):
    info = pipeline.get_info(cfg)
    source = pipeline.make_train_source(cfg, global_batch_size=4, seed=0, process_index=1, process_count=2)
    train = [source.batch(step) for step in (0, 1)]
    again = pipeline.make_train_source(
        cfg, global_batch_size=4, seed=0, process_index=1, process_count=2).batch(1)
    evals = list(pipeline.make_eval_batches(cfg, "test", batch_size=8))
  assert (info.image_shape, info.num_classes) == (shape, num_classes)
  assert 0 < info.num_train <= 24 and info.num_test == sum(b["mask"].sum() for b in evals)
  for batch in train + evals:
    assert batch["image"].shape == (len(batch["label"]),) + shape
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert np.all((0 <= batch["label"]) & (batch["label"] < num_classes))
  assert train[0]["image"].shape[0] == 2 and train[0]["image"].std() > 0.05
  np.testing.assert_array_equal(train[1]["image"], again["image"])
  assert evals[0]["image"].shape[0] == 8


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_missing_dataset_fails_fast_with_instructions(tmp_path, name):
  cfg = _cfg(name, data_dir=str(tmp_path))
  for make in (
      lambda: pipeline.get_info(cfg),
      lambda: pipeline.make_train_source(cfg, global_batch_size=8, seed=0),
      lambda: pipeline.make_eval_batches(cfg, "test", batch_size=8),
  ):
    start = time.perf_counter()
    with pytest.raises(errors.DataError) as raised:
      make()
    assert time.perf_counter() - start < 1.0
    message = str(raised.value)
    assert name in message and "tfds build" in message and str(tmp_path) in message
    assert "\n" not in message
  assert os.listdir(tmp_path) == []


def test_unknown_dataset_is_config_error():
  with pytest.raises(errors.ConfigError, match="known: .*cifar10"):
    pipeline.get_info(_cfg("cifar11"))
