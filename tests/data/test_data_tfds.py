"""The tfds path: mocked datasets through the real pipeline, class subsets, and missing datasets."""

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
        ("imagenet2012", {"image_size": 48}, (48, 48, 3), 1000),
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


class _FakeImagenetSource:
  """A random-access ImageNet split with known labels, standing in for ArrayRecord files.

  Like the real data source it returns the image undecoded (bytes) when the
  reader asks for `SkipDecoding` on it, and counts the images it decodes.
  """

  def __init__(self, num_examples, skip_image):
    self.labels = (np.arange(num_examples) * 37) % 1000
    self.skip_image = skip_image
    self.decoded = 0

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    if self.skip_image:
      return {"image": b"jpeg bytes", "label": np.int64(self.labels[i])}
    self.decoded += 1
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, size=(40 + i % 7, 50, 3), dtype=np.uint8)
    return {"image": image, "label": np.int64(self.labels[i])}

  def __getitems__(self, indices):
    return [self[i] for i in indices]


def test_class_subset_scans_labels_without_decoding_images():
  opened = []

  def as_data_source(builder, split, decoders=None, **kwargs):
    del builder, kwargs
    skip = bool(decoders) and isinstance(decoders.get("image"), tfds.decode.SkipDecoding)
    opened.append(_FakeImagenetSource(61 if split == "train" else 23, skip))
    return opened[-1]

  cfg = _cfg("imagenet2012", image_size=32, class_subset=500, augment=False)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    info = pipeline.get_info(cfg)
    evals = list(pipeline.make_eval_batches(cfg, "test", batch_size=8))
    train = pipeline.make_train_source(cfg, global_batch_size=4, seed=0)
    epoch = np.concatenate([train.batch(s)["label"] for s in range(train.steps_per_epoch)])
  keep_train = np.flatnonzero((np.arange(61) * 37) % 1000 < 500)
  keep_test = np.flatnonzero((np.arange(23) * 37) % 1000 < 500)
  assert (info.num_classes, info.num_train, info.num_test) == (500, len(keep_train), len(keep_test))
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in evals])
  np.testing.assert_array_equal(labels, (keep_test * 37) % 1000)
  assert set(epoch.tolist()) <= set(((keep_train * 37) % 1000).tolist())
  assert len(set(epoch.tolist())) == len(epoch) == 4 * (len(keep_train) // 4)
  # The label scans read images undecoded; only the batches decoded any.
  scans = [s for s in opened if s.skip_image]
  assert scans and all(s.decoded == 0 for s in opened if s.skip_image)


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012", "cityscapes"])
def test_missing_dataset_fails_fast_with_instructions(tmp_path, name):
  cfg = _cfg(name, data_dir=str(tmp_path), augment=name != "cityscapes")
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
    assert ("manual download" in message) == (name != "cifar10")
  assert os.listdir(tmp_path) == []


def test_unknown_dataset_is_config_error():
  with pytest.raises(errors.ConfigError, match="known: .*cifar10"):
    pipeline.get_info(_cfg("cifar11"))


@pytest.mark.parametrize("garbage", ["not json {", '{"name": "mnist", "splits": 3}'])
def test_garbage_metadata_is_one_data_error(tmp_path, garbage):
  """A data_dir whose prepared-looking folder holds damaged metadata files."""
  version = str(tfds.builder_cls("mnist").VERSION)
  folder = tmp_path / "mnist" / version
  folder.mkdir(parents=True)
  for name in ("dataset_info.json", "features.json"):
    (folder / name).write_text(garbage)
  cfg = ml_collections.ConfigDict({"name": "mnist", "data_dir": str(tmp_path), "image_size": 0,
                                   "class_subset": 0, "augment": False})
  with pytest.raises(errors.DataError, match="mnist"):
    pipeline.make_train_source(cfg, global_batch_size=8, seed=0)
