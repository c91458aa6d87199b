"""The dataset registry: names in configs -> random-access sources + transforms.

A dataset entry answers three questions for a data config (`name`,
`data_dir`, `image_size`, `class_subset`, `augment`):

* `info(cfg)`: its static `DatasetInfo`.
* `split(cfg, split)`: a random-access sequence (`len`, `[i]`) of raw examples
  of a split ('train', 'test', or for tfds any split string such as
  'validation[:1000]'), restricted to the first `class_subset` classes.
* `preprocess(example, cfg, rng)`: one raw example -> `dict(image=float32
  [H, W, C] in [0, 1], label=int32 [] or [H, W])`; `rng` is None for
  evaluation and a generator for (possibly augmented) training.

`pipeline.py` turns these into deterministic batches; nothing here batches,
shuffles or knows about processes.

Two kinds of entry exist. `EmbeddedDataset` wraps arrays shipped inside
installed packages (see `embedded.py`) and always works offline.
`TfdsDataset` reads a prepared TFDS dataset in ArrayRecord format through
`tfds.data_source`, which gives random access without TensorFlow. It first
checks, on the local disk only, that the dataset is prepared, and otherwise
raises a `DataError` saying how to prepare it; so a missing dataset fails in
milliseconds instead of attempting a download. Adding a dataset is one
registry entry; e.g. Cityscapes (dense labels) would be

  'cityscapes': TfdsDataset(
      'cityscapes', tfds_name='cityscapes/semantic_segmentation',
      test_split='validation', image_key='image_left',
      label_key='segmentation_label', num_classes=19, image_shape=(1024, 2048, 3),
      mean=..., std=..., style='fixed', dense_labels=True,
      label_map=CITYSCAPES_TRAIN_IDS),

where `label_map` maps raw label ids to training ids and -1 (ignore).
"""

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np

from advjax import errors
from advjax.data import embedded
from advjax.data import preprocess
from advjax.data.info import DatasetInfo


def field(cfg, name: str, default: Any = None) -> Any:
  """Reads an optional data-config field, defaulting when it is absent."""
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


class Subset:
  """Random-access view of `source` at `indices` (keeps the order of `indices`)."""

  def __init__(self, source: Sequence[Any], indices: np.ndarray):
    self._source = source
    self._indices = indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> Any:
    return self._source[int(self._indices[i])]


class ArraySource:
  """Random-access examples `dict(image=images[i], label=labels[i])` over arrays."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self._images = images
    self._labels = labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self._images[i], "label": self._labels[i]}


def _class_subset(cfg, num_classes: int, dense_labels: bool) -> int:
  """Number of classes kept: `cfg.class_subset`, or all when it is 0."""
  subset = int(field(cfg, "class_subset", 0) or 0)
  if subset == 0:
    return num_classes
  if dense_labels:
    raise errors.ConfigError(
        f"data.class_subset={subset} is not supported for dense-label dataset {field(cfg, 'name')!r}")
  if not 0 < subset <= num_classes:
    raise errors.ConfigError(
        f"data.class_subset={subset} must be in 1..{num_classes} for {field(cfg, 'name')!r}")
  return subset


def _output_size(cfg, native: tuple[int, int, int] | None, default_size: int) -> tuple[int, int, int]:
  size = int(field(cfg, "image_size", 0) or 0)
  if size < 0:
    raise errors.ConfigError(f"data.image_size={size} must be >= 0 (0 = native)")
  channels = native[2] if native else 3
  if size == 0:
    return native if native and native[0] else (default_size, default_size, channels)
  return (size, size, channels)


def _transform(image: np.ndarray, style: str, out_shape, cfg, rng: np.random.Generator | None) -> np.ndarray:
  """Applies the eval or train transform of `style` to one image."""
  height, width = out_shape[:2]
  augment = rng is not None and bool(field(cfg, "augment", False))
  if style == "imagenet":
    if augment:
      return preprocess.random_resized_crop(image, height, rng)
    return preprocess.center_crop(image, height)
  image = preprocess.resize(image, height, width)
  if augment and style == "cifar":
    return preprocess.pad_crop_flip(image, rng, pad=4)
  if augment and style == "digits":
    return preprocess.pad_crop_flip(image, rng, pad=max(1, height // 14), flip=False)
  return image


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
  """A dataset whose arrays ship inside an installed package (see embedded.py).

  Attributes:
    name: registry name.
    arrays: cached loader returning (train_images, train_labels, test_images,
      test_labels), images float32 [N, H, W, C] in [0, 1].
    num_classes: number of classes in the labels.
  """

  name: str
  arrays: Any
  num_classes: int = 10

  def _split_arrays(self, cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    train_x, train_y, test_x, test_y = self.arrays()
    if split == "train":
      x, y = train_x, train_y
    elif split == "test":
      x, y = test_x, test_y
    else:
      raise errors.ConfigError(f"dataset {self.name!r} has splits 'train' and 'test', not {split!r}")
    keep = _class_subset(cfg, self.num_classes, False)
    if keep < self.num_classes:
      idx = np.flatnonzero(y < keep)
      x, y = x[idx], y[idx]
    return x, y

  def info(self, cfg) -> DatasetInfo:
    train_x, _ = self._split_arrays(cfg, "train")
    _, test_y = self._split_arrays(cfg, "test")
    channels = train_x.shape[-1]
    return DatasetInfo(
        name=self.name,
        num_classes=_class_subset(cfg, self.num_classes, False),
        image_shape=_output_size(cfg, train_x.shape[1:], 0),
        mean=tuple(float(m) for m in train_x.reshape(-1, channels).mean(axis=0)),
        std=tuple(float(s) for s in train_x.reshape(-1, channels).std(axis=0)),
        num_train=len(train_x),
        num_test=len(test_y),
    )

  def split(self, cfg, split: str) -> Sequence[dict[str, np.ndarray]]:
    return ArraySource(*self._split_arrays(cfg, split))

  def preprocess(self, example, cfg, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    out_shape = _output_size(cfg, example["image"].shape, 0)
    image = _transform(example["image"], "digits", out_shape, cfg, rng)
    return {"image": image, "label": np.int32(example["label"])}


def _tfds():
  # Imported lazily: embedded data and tests that never touch tfds stay fast.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _tfds_is_mocked() -> bool:
  """True inside `tfds.testing.mock_data`, which serves examples with no files.

  mock_data replaces `DatasetBuilder.as_data_source` with a generator of random
  examples; the replacement lives in another module, which is how it is told
  apart from the real reader.
  """
  builder_cls = _tfds().core.DatasetBuilder
  return builder_cls.as_data_source.__module__ != builder_cls.__module__


def _not_prepared(name: str, tfds_name: str, builder, data_dir: str, reason: str) -> errors.DataError:
  where = repr(data_dir) if data_dir else "the tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  manual = (" (this dataset also needs its manual download in DIR/downloads/manual)"
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else "")
  return errors.DataError(
      f"dataset {name!r} ({tfds_name}) {reason} in data_dir {where} (looked for {builder.data_path}); "
      f"on a machine with network run `tfds build {tfds_name} --file_format=array_record --data_dir DIR`"
      f"{manual}, copy DIR here and pass --config.data.data_dir=DIR")


def _open_tfds(name: str, tfds_name: str, split: str, data_dir: str) -> Sequence[dict[str, Any]]:
  """Opens one split of a prepared ArrayRecord TFDS dataset, checking first.

  The check reads only the local variant folder (no network, no folders
  created); `tfds.data_source(download=False)` on an unprepared folder would
  fail with a confusing message about TFRECORD instead. Nothing is cached, so
  a test's `tfds.testing.mock_data` never leaks into later calls.
  """
  tfds = _tfds()
  builder = tfds.builder(tfds_name, data_dir=data_dir or None)
  path = os.fspath(builder.data_path)
  if not (builder.is_prepared() or _tfds_is_mocked()):
    raise _not_prepared(name, tfds_name, builder, data_dir, "is not prepared")
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False)
  except NotImplementedError as e:
    raise _not_prepared(
        name, tfds_name, builder, data_dir, "is prepared but not in ArrayRecord format") from e
  except (ValueError, KeyError) as e:
    raise errors.DataError(f"dataset {name!r} ({tfds_name}) has no split {split!r} at {path}: {e}") from e


def _tfds_labels(name: str, tfds_name: str, split: str, data_dir: str, image_key: str,
                 label_key: str) -> np.ndarray:
  """int32 [num_examples] labels of a split, needed to select a class subset."""
  if _tfds_is_mocked():
    source = _open_tfds(name, tfds_name, split, data_dir)
    return np.array([int(source[i][label_key]) for i in range(len(source))], np.int32)
  return _scan_tfds_labels(name, tfds_name, split, data_dir, image_key, label_key)


@functools.lru_cache(maxsize=None)
def _scan_tfds_labels(name: str, tfds_name: str, split: str, data_dir: str, image_key: str,
                      label_key: str) -> np.ndarray:
  """Reads every label of a prepared split once per process, without decoding images.

  The prepared dataset folder is never written to; the scan is cached in memory.
  """
  tfds = _tfds()
  _open_tfds(name, tfds_name, split, data_dir)
  source = tfds.data_source(
      tfds_name, split=split, data_dir=data_dir or None, download=False,
      decoders={image_key: tfds.decode.SkipDecoding()})
  labels = np.empty(len(source), np.int32)
  chunk = 4096
  for start in range(0, len(source), chunk):
    stop = min(start + chunk, len(source))
    labels[start:stop] = [int(ex[label_key]) for ex in source.__getitems__(list(range(start, stop)))]
  return labels


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  """A TFDS dataset read from ArrayRecord files.

  Attributes:
    name: registry name.
    tfds_name: TFDS name (with config, e.g. 'cityscapes/semantic_segmentation').
    test_split: TFDS split used for 'test' ('test' or 'validation').
    num_classes: number of classes before any subset.
    image_shape: native (H, W, C); H = W = 0 for variable-size images.
    mean: per-channel mean of the training images in [0, 1].
    std: per-channel standard deviation of the training images in [0, 1].
    style: transform family: 'cifar' (pad-crop-flip), 'digits' (pad-crop),
      'imagenet' (random-resized-crop / centre crop), 'fixed' (resize only).
    default_size: output side when image_size = 0 and images vary in size.
    image_key: feature holding the image.
    label_key: feature holding the label.
    dense_labels: labels are [H, W(, 1)] maps rather than class indices.
    label_map: optional lookup table from raw label ids to training ids
      (-1 = ignore), for datasets whose raw ids are not 0..num_classes-1.
  """

  name: str
  tfds_name: str
  test_split: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  style: str
  default_size: int = 224
  image_key: str = "image"
  label_key: str = "label"
  dense_labels: bool = False
  label_map: tuple[int, ...] | None = None

  def _tfds_split(self, split: str) -> str:
    return {"train": "train", "test": self.test_split}.get(split, split)

  def split(self, cfg, split: str) -> Sequence[dict[str, Any]]:
    data_dir = str(field(cfg, "data_dir", "") or "")
    tfds_split = self._tfds_split(split)
    keep = _class_subset(cfg, self.num_classes, self.dense_labels)
    source = _open_tfds(self.name, self.tfds_name, tfds_split, data_dir)
    if keep == self.num_classes:
      return source
    labels = _tfds_labels(self.name, self.tfds_name, tfds_split, data_dir, self.image_key, self.label_key)
    return Subset(source, np.flatnonzero(labels < keep))

  def info(self, cfg) -> DatasetInfo:
    if self.dense_labels and field(cfg, "augment", False):
      raise errors.ConfigError(f"data.augment is not supported yet for dense-label dataset {self.name!r}")
    return DatasetInfo(
        name=self.name,
        num_classes=_class_subset(cfg, self.num_classes, self.dense_labels),
        image_shape=_output_size(cfg, self.image_shape, self.default_size),
        mean=self.mean,
        std=self.std,
        num_train=len(self.split(cfg, "train")),
        num_test=len(self.split(cfg, "test")),
        dense_labels=self.dense_labels,
    )

  def preprocess(self, example, cfg, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    out_shape = _output_size(cfg, self.image_shape, self.default_size)
    image = _transform(np.asarray(example[self.image_key]), self.style, out_shape, cfg, rng)
    label = np.asarray(example[self.label_key])
    if self.label_map is not None:
      label = np.asarray(self.label_map, np.int32)[label]
    if self.dense_labels:
      label = label.reshape(label.shape[:2])
      if label.shape != out_shape[:2]:
        raise errors.ConfigError(f"data.image_size must be 0 (native) for dense-label dataset {self.name!r}")
    return {"image": image, "label": label.astype(np.int32)}


DATASETS = {
    "mnist_embedded": EmbeddedDataset("mnist_embedded", embedded.mnist_arrays),
    "digits_embedded": EmbeddedDataset("digits_embedded", embedded.digits_arrays),
    "mnist": TfdsDataset(
        "mnist", tfds_name="mnist", test_split="test", num_classes=10, image_shape=(28, 28, 1),
        mean=(0.1307,), std=(0.3081,), style="digits"),
    "cifar10": TfdsDataset(
        "cifar10", tfds_name="cifar10", test_split="test", num_classes=10, image_shape=(32, 32, 3),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), style="cifar"),
    "cifar100": TfdsDataset(
        "cifar100", tfds_name="cifar100", test_split="test", num_classes=100, image_shape=(32, 32, 3),
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), style="cifar"),
    "imagenet2012": TfdsDataset(
        "imagenet2012", tfds_name="imagenet2012", test_split="validation", num_classes=1000,
        image_shape=(0, 0, 3), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), style="imagenet"),
}


def lookup(cfg) -> EmbeddedDataset | TfdsDataset:
  """The registry entry named by `cfg.name`; ConfigError for unknown names."""
  name = field(cfg, "name")
  if name not in DATASETS:
    raise errors.unknown_name("dataset", name, DATASETS)
  return DATASETS[name]
