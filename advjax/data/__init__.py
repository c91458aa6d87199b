"""Datasets for advjax: embedded real data, tfds + grain pipelines.

Images leave this package as float32 NHWC in [0, 1] and labels as int32 class
indices [N] or dense label maps [N, H, W] (-1 = ignore). Mean/std
normalisation is left to the model, using `DatasetInfo.mean/std`, so attack
budgets stay in pixel units.

* `embedded`: real data that ships inside installed packages (MNIST subset,
  8x8 digits, photos, digit-segmentation canvases, a VOC photo with its class
  map), usable with no network.
* `datasets`: the registry `DATASETS` of names usable as `config.data.name`.
* `pipeline`: `make_train_source` (deterministic, random-access training
  batches by step), `make_eval_batches` (padded, masked, in order), `get_info`.
* `segmentation`: label-map helpers (VOC palette, class tables, canvases,
  the VOC folder reader).
"""

from advjax.data.datasets import DATASETS, DataConfig, lookup
from advjax.data.embedded import digits_arrays, mnist_arrays, mnist_seg_arrays, photos, voc_photo
from advjax.data.info import DatasetInfo
from advjax.data.pipeline import TrainSource, check_split, get_info, make_eval_batches, make_train_source
from advjax.data.segmentation import colorize, voc_palette

__all__ = [
    "DATASETS",
    "DataConfig",
    "DatasetInfo",
    "TrainSource",
    "check_split",
    "colorize",
    "digits_arrays",
    "get_info",
    "lookup",
    "make_eval_batches",
    "make_train_source",
    "mnist_arrays",
    "mnist_seg_arrays",
    "photos",
    "voc_palette",
    "voc_photo",
]
