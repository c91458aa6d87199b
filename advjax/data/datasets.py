"""The dataset registry: names in configs -> random-access sources + transforms.

A dataset entry answers three questions for a data config (`name`,
`data_dir`, `image_size`, `class_subset`, `augment`):

* `info(cfg)`: its static `DatasetInfo`.
* `split(cfg, split)`: a random-access sequence (`len`, `[i]`) of raw examples
  of a split ('train', 'test', or for tfds any split string such as
  'validation[:1000]'), restricted to the first `class_subset` classes.
* `preprocess(example, cfg, rng, index=None)`: one raw example ->
  `dict(image=float32 [H, W, C] in [0, 1], label=int32 [] or [H, W])`; `rng`
  is None for evaluation and a generator for (possibly augmented) training;
  `index`, the example's position in its split, names it in error messages.

`pipeline.py` turns these into deterministic batches; nothing here batches,
shuffles or knows about processes.

Three kinds of entry exist. `EmbeddedDataset` wraps arrays shipped inside (or
built from) installed packages (see `embedded.py`) and always works offline.
`TfdsDataset` reads a prepared TFDS dataset in ArrayRecord format through
`tfds.data_source(download=False)`, which gives random access without
TensorFlow, never downloads and fails in milliseconds on a missing dataset;
that failure becomes a `DataError` saying how to prepare it.
`VocSegmentationDataset` reads the standard PASCAL VOC 2012 folder
(`VOCdevkit/VOC2012`), which TFDS's `voc` does not cover: it has boxes, not
masks.

Output size (`data.image_size`, 0 = native): for datasets of one fixed image
size it is the output *height*, and the width keeps the native aspect ratio
(square data: a square side; Cityscapes 1024x2048: image_size=512 gives
512x1024, the resolution of the shared-adversarial-training experiments).
Data of varying size is resized (ImageNet: centre crop; VOC: `fit_and_pad`)
to image_size x image_size, or `default_size` when image_size is 0.

Dense labels (segmentation): images are resized bilinearly and label maps by
nearest neighbour (`preprocess.resize_labels`). `label_map` turns raw ids into
training ids (Cityscapes' 34 ids -> 19 classes, other ids -> -1); every label
map is checked before it is resized: shape equal to the image's, values in
[-1, num_classes), else a `DataError` naming the example. Training
augmentation is not implemented for dense labels (it would have to move image
and label together) and `data.augment` is refused with a ConfigError.
"""

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np

from advjax import errors
from advjax.data import embedded
from advjax.data import preprocess
from advjax.data import segmentation
from advjax.data.info import DatasetInfo
from advjax.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data`: which dataset, and how it is read.

  Attributes:
    name: a key of `DATASETS`.
    data_dir: tfds data_dir (or the VOC folder's parent); '' means the tfds default.
    image_size: output size, 0 = native: the crop side for variable-size
      (ImageNet-like) data, the height for fixed-size data (the width keeps
      the aspect ratio; Cityscapes at 512 is 512x1024).
    class_subset: keep only the first N classes (ImageNet subsets); 0 keeps all.
    augment: training augmentation (crop + flip for CIFAR and ImageNet).
  """
  name: str = "mnist_embedded"
  data_dir: str = ""
  image_size: int = 0
  class_subset: int = 0
  augment: bool = False

  def __post_init__(self):
    if not 0 <= self.image_size <= 16384:
      raise errors.ConfigError(f"image_size={self.image_size!r} must be in [0, 16384] (0 = native)")
    if not 0 <= self.class_subset <= 1_000_000:
      raise errors.ConfigError(f"class_subset={self.class_subset!r} must be in [0, 1000000] (0 = all)")


def field(cfg, name: str) -> Any:
  """A data-config field of `cfg` (a ConfigDict, dict or DataConfig); `DataConfig`'s default when absent."""
  default = getattr(DataConfig(), name)
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
  subset = int(field(cfg, "class_subset") or 0)
  if subset == 0:
    return num_classes
  if dense_labels:
    raise errors.ConfigError(
        f"data.class_subset={subset} is not supported for dense-label dataset {field(cfg, 'name')!r}")
  if not 0 < subset <= num_classes:
    raise errors.ConfigError(
        f"data.class_subset={subset} must be in 1..{num_classes} for {field(cfg, 'name')!r}")
  return subset


def _refuse_dense_augment(cfg, name: str) -> None:
  if field(cfg, "augment"):
    raise errors.ConfigError(
        f"data.augment is not supported for dense-label dataset {name!r} (no joint image/label augmentation)")


def _output_size(cfg, native: tuple[int, int, int] | None, default_size: int) -> tuple[int, int, int]:
  """(height, width, channels) the pipeline yields; see the module docstring for image_size."""
  size = int(field(cfg, "image_size") or 0)
  if size < 0:
    raise errors.ConfigError(f"data.image_size={size} must be >= 0 (0 = native)")
  channels = native[2] if native else 3
  height, width = (int(native[0]), int(native[1])) if native and native[0] else (0, 0)
  if size == 0:
    return (height, width, channels) if height else (default_size, default_size, channels)
  if not height:
    return (size, size, channels)
  if (size * width) % height:
    raise errors.ConfigError(
        f"data.image_size={size} (the output height) gives a non-integer width for the native {height}x{width} "
        f"images of {field(cfg, 'name')!r}; pick a height that keeps the aspect ratio exact")
  return (size, size * width // height, channels)


def _transform(image: np.ndarray, style: str, out_shape, cfg, rng: np.random.Generator | None) -> np.ndarray:
  """Applies the eval or train transform of `style` to one image."""
  height, width = out_shape[:2]
  augment = rng is not None and bool(field(cfg, "augment"))
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


def _where(name: str, index: int | None) -> str:
  return f"dataset {name!r} example {index}" if index is not None else f"dataset {name!r}, an example"


def _dense_example(image: np.ndarray, label: np.ndarray, out_shape, num_classes: int,
                   where: str) -> dict[str, np.ndarray]:
  """Checks a label map against its image, then resizes both to `out_shape` (bilinear / nearest)."""
  label = np.asarray(label)
  if label.ndim == 3 and label.shape[-1] == 1:
    label = label[..., 0]
  preprocess.check_label_map(label, image.shape, num_classes, where)
  height, width = out_shape[:2]
  return {"image": preprocess.resize(image, height, width),
          "label": preprocess.resize_labels(label, height, width).astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
  """A dataset whose arrays ship inside an installed package (see embedded.py).

  Attributes:
    name: registry name.
    arrays: cached loader returning (train_images, train_labels, test_images,
      test_labels), images float32 [N, H, W, C] in [0, 1], labels int32 [N]
      or, with dense_labels, [N, H, W].
    num_classes: number of classes in the labels.
    dense_labels: labels are [H, W] maps (segmentation) rather than indices.
  """

  name: str
  arrays: Any
  num_classes: int = 10
  dense_labels: bool = False

  def _split_arrays(self, cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    train_x, train_y, test_x, test_y = self.arrays()
    if split == "train":
      x, y = train_x, train_y
    elif split == "test":
      x, y = test_x, test_y
    else:
      raise errors.ConfigError(f"dataset {self.name!r} has splits 'train' and 'test', not {split!r}")
    keep = _class_subset(cfg, self.num_classes, self.dense_labels)
    if keep < self.num_classes:
      idx = np.flatnonzero(y < keep)
      x, y = x[idx], y[idx]
    return x, y

  def info(self, cfg) -> DatasetInfo:
    if self.dense_labels:
      _refuse_dense_augment(cfg, self.name)
    train_x, _ = self._split_arrays(cfg, "train")
    _, test_y = self._split_arrays(cfg, "test")
    channels = train_x.shape[-1]
    return DatasetInfo(
        name=self.name,
        num_classes=_class_subset(cfg, self.num_classes, self.dense_labels),
        image_shape=_output_size(cfg, train_x.shape[1:], 0),
        mean=tuple(float(m) for m in train_x.reshape(-1, channels).mean(axis=0)),
        std=tuple(float(s) for s in train_x.reshape(-1, channels).std(axis=0)),
        num_train=len(train_x),
        num_test=len(test_y),
        dense_labels=self.dense_labels,
    )

  def split(self, cfg, split: str) -> Sequence[dict[str, np.ndarray]]:
    return ArraySource(*self._split_arrays(cfg, split))

  def preprocess(self, example, cfg, rng: np.random.Generator | None, index: int | None = None
                 ) -> dict[str, np.ndarray]:
    out_shape = _output_size(cfg, example["image"].shape, 0)
    if self.dense_labels:
      return _dense_example(example["image"], example["label"], out_shape, self.num_classes,
                            _where(self.name, index))
    image = _transform(example["image"], "digits", out_shape, cfg, rng)
    return {"image": image, "label": np.int32(example["label"])}


def _tfds():
  # Imported lazily: embedded data and tests that never touch tfds stay fast.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def _not_prepared(name: str, tfds_name: str, builder, data_dir: str, reason: str) -> errors.DataError:
  where = repr(data_dir) if data_dir else "the tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  manual = (" (this dataset also needs its manual download in DIR/downloads/manual)"
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else "")
  return errors.DataError(
      f"dataset {name!r} ({tfds_name}) {reason} in data_dir {where} (looked for {builder.data_path}); "
      f"on a machine with network run `tfds build {tfds_name} --file_format=array_record --data_dir DIR`"
      f"{manual}, copy DIR here and pass --config.data.data_dir=DIR")


def _open_tfds(name: str, tfds_name: str, split: str, data_dir: str, decoders=None) -> Sequence[dict[str, Any]]:
  """Opens one split of a prepared ArrayRecord TFDS dataset, or raises DataError.

  `tfds.data_source(download=False)` only reads the local variant folder: it
  never downloads, creates no folders, and fails in milliseconds when the
  dataset is absent. Its failures are translated afterwards, by asking the
  builder whether the dataset is prepared at all, into one line that says how
  to prepare it. Nothing is cached here.
  """
  tfds = _tfds()

  def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir or None, download=False, decoders=decoders)
  except Exception as e:  # tfds raises many types; each becomes one DataError below.
    try:
      builder = tfds.builder(tfds_name, data_dir=data_dir or None)
      prepared = builder.is_prepared()
    except Exception as unreadable:  # Damaged metadata (dataset_info.json, features.json).
      raise errors.DataError(
          f"dataset {name!r} ({tfds_name}) in data_dir {data_dir or 'the tfds default'!r} cannot be read: "
          f"{first_line(unreadable)}") from e
    if not prepared:
      raise _not_prepared(name, tfds_name, builder, data_dir, "is not prepared") from e
    if isinstance(e, NotImplementedError):
      raise _not_prepared(name, tfds_name, builder, data_dir, "is prepared but not in ArrayRecord format") from e
    if isinstance(e, (ValueError, KeyError)):
      raise errors.DataError(
          f"dataset {name!r} ({tfds_name}) has no split {split!r} at {builder.data_path}: {first_line(e)}") from e
    raise errors.DataError(f"dataset {name!r} ({tfds_name}) at {builder.data_path} cannot be read: "
                           f"{first_line(e)}") from e


def _tfds_labels(name: str, tfds_name: str, split: str, data_dir: str, image_key: str,
                 label_key: str) -> np.ndarray:
  """int32 [num_examples] labels of a split, needed to select a class subset.

  Opening the split first reports a missing dataset and gives the number of
  examples, which is part of the cache key of the scan.
  """
  num_examples = len(_open_tfds(name, tfds_name, split, data_dir))
  return _scan_tfds_labels(name, tfds_name, split, data_dir, image_key, label_key, num_examples)


@functools.lru_cache(maxsize=None)
def _scan_tfds_labels(name: str, tfds_name: str, split: str, data_dir: str, image_key: str,
                      label_key: str, num_examples: int) -> np.ndarray:
  """Reads every label of a split once per process, leaving the images undecoded.

  The images come back as their encoded bytes (`tfds.decode.SkipDecoding`),
  so the scan costs a read, not a decode, per example. The prepared dataset
  folder is never written to; the result is cached in memory per (split,
  data_dir, number of examples).
  """
  tfds = _tfds()
  source = _open_tfds(name, tfds_name, split, data_dir, decoders={image_key: tfds.decode.SkipDecoding()})
  if len(source) != num_examples:
    raise errors.DataError(f"dataset {name!r} split {split!r} changed size while it was scanned")
  labels = np.empty(num_examples, np.int32)
  chunk = 4096
  for start in range(0, num_examples, chunk):
    stop = min(start + chunk, num_examples)
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
    data_dir = str(field(cfg, "data_dir") or "")
    tfds_split = self._tfds_split(split)
    keep = _class_subset(cfg, self.num_classes, self.dense_labels)
    source = _open_tfds(self.name, self.tfds_name, tfds_split, data_dir)
    if keep == self.num_classes:
      return source
    labels = _tfds_labels(self.name, self.tfds_name, tfds_split, data_dir, self.image_key, self.label_key)
    return Subset(source, np.flatnonzero(labels < keep))

  def info(self, cfg) -> DatasetInfo:
    if self.dense_labels:
      _refuse_dense_augment(cfg, self.name)
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

  def preprocess(self, example, cfg, rng: np.random.Generator | None, index: int | None = None
                 ) -> dict[str, np.ndarray]:
    out_shape = _output_size(cfg, self.image_shape, self.default_size)
    label = np.asarray(example[self.label_key])
    if self.label_map is not None:
      label = np.asarray(self.label_map, np.int32)[label]
    if self.dense_labels:
      return _dense_example(np.asarray(example[self.image_key]), label, out_shape, self.num_classes,
                            _where(self.name, index))
    image = _transform(np.asarray(example[self.image_key]), self.style, out_shape, cfg, rng)
    return {"image": image, "label": label.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class VocSegmentationDataset:
  """PASCAL VOC 2012 semantic segmentation read from its standard folder.

  `data.data_dir` is the folder that holds `VOCdevkit/VOC2012` (as extracted
  from VOCtrainval_11-May-2012.tar), or that VOC2012 folder itself. Splits
  are the lists in ImageSets/Segmentation: 'train' is train.txt (1,464
  images), 'test' is val.txt (1,449 images, the usual evaluation set), and
  any other name reads <name>.txt (e.g. 'trainval', or 'train_aug' if the
  SBD-augmented list and masks are added to the folder).

  Images vary in size (at most 500x500); `preprocess.fit_and_pad` brings each
  to image_size x image_size (default 512 when image_size is 0): shrink only
  if the longer side exceeds it (bilinear image, nearest label), then pad
  bottom and right with zero pixels and ignore labels. Label 255 (object
  boundaries and void) becomes -1; any other value outside 0..20 is an error.

  Attributes:
    name: registry name.
    num_classes: 21 (background and 20 object classes).
    mean: per-channel mean used by the model; ImageNet's, as VOC models are
      fine-tuned from ImageNet backbones.
    std: per-channel standard deviation, ImageNet's.
    default_size: output side when image_size is 0.
  """

  name: str
  num_classes: int = 21
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  default_size: int = 512

  def _root(self, cfg) -> str:
    data_dir = str(field(cfg, "data_dir") or "")
    candidates = [os.path.join(data_dir, "VOCdevkit", "VOC2012"), data_dir]
    for root in candidates:
      if data_dir and os.path.isdir(os.path.join(root, "ImageSets", "Segmentation")):
        return root
    raise errors.DataError(
        f"dataset {self.name!r} needs data.data_dir to hold VOCdevkit/VOC2012 (with JPEGImages, "
        f"SegmentationClass and ImageSets/Segmentation), got {data_dir!r}; extract the PASCAL VOC 2012 "
        "trainval archive (VOCtrainval_11-May-2012.tar) into DIR and pass --config.data.data_dir=DIR")

  def split(self, cfg, split: str) -> Sequence[dict[str, Any]]:
    _class_subset(cfg, self.num_classes, True)
    name = {"train": "train", "test": "val"}.get(split, split)
    return segmentation.VocDirectory(self._root(cfg), name)

  def info(self, cfg) -> DatasetInfo:
    _refuse_dense_augment(cfg, self.name)
    return DatasetInfo(
        name=self.name,
        num_classes=_class_subset(cfg, self.num_classes, True),
        image_shape=_output_size(cfg, None, self.default_size),
        mean=self.mean,
        std=self.std,
        num_train=len(self.split(cfg, "train")),
        num_test=len(self.split(cfg, "test")),
        dense_labels=True,
    )

  def preprocess(self, example, cfg, rng: np.random.Generator | None, index: int | None = None
                 ) -> dict[str, np.ndarray]:
    del rng  # No augmentation for dense labels (refused in info).
    size = _output_size(cfg, None, self.default_size)[0]
    image = np.asarray(example["image"])
    label = np.asarray(example["label"]).astype(np.int32)
    label[label == segmentation.VOC_IGNORE] = -1
    where = _where(self.name, index) + (f" ({example['id']})" if "id" in example else "")
    preprocess.check_label_map(label, image.shape, self.num_classes, where)
    image, label = preprocess.fit_and_pad(image, label, size)
    return {"image": image, "label": label}


DATASETS = Registry("dataset", {
    "mnist_embedded": EmbeddedDataset("mnist_embedded", embedded.mnist_arrays),
    "digits_embedded": EmbeddedDataset("digits_embedded", embedded.digits_arrays),
    "mnist_seg_embedded": EmbeddedDataset(
        "mnist_seg_embedded", embedded.mnist_seg_arrays, num_classes=11, dense_labels=True),
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
        image_shape=(0, 0, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD, style="imagenet"),
    # Fine annotations (2,975 train / 500 validation images; the test split's
    # labels are withheld); ImageNet statistics, as Cityscapes models start
    # from ImageNet backbones. image_size=512 gives the 512x1024 inputs of
    # the shared-adversarial-training experiments.
    "cityscapes": TfdsDataset(
        "cityscapes", tfds_name="cityscapes/semantic_segmentation", test_split="validation", num_classes=19,
        image_shape=(1024, 2048, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD, style="fixed",
        image_key="image_left", label_key="segmentation_label", dense_labels=True,
        label_map=segmentation.CITYSCAPES_TRAIN_IDS),
    "voc2012_seg": VocSegmentationDataset("voc2012_seg"),
})


def lookup(cfg) -> EmbeddedDataset | TfdsDataset | VocSegmentationDataset:
  """The registry entry named by `cfg.name`; ConfigError for unknown names."""
  return DATASETS[field(cfg, "name")]
