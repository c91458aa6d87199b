"""Deterministic, random-access host batches with grain.

Training must be reproducible and resumable: a run restarted from a checkpoint
at step t has to see exactly the batches the uninterrupted run would have seen,
whatever the number of hosts. So training batches are a pure function of
(seed, step), computed by random access rather than by advancing an iterator:

* The training stream is the concatenation of epochs. Epoch e is the training
  split shuffled by a permutation determined by (seed, e) (grain's
  `MapDataset.shuffle`, a Feistel index shuffle), truncated to
  `steps_per_epoch * global_batch_size` examples (the remainder is dropped).
* The global batch at step t is stream positions [t*G, (t+1)*G) within its
  epoch; process p of P receives rows [p*L, (p+1)*L) of it, L = G / P. So the
  processes' local batches concatenated give the single-process global batch.
* Augmentation draws from a generator seeded by (seed, e) and the example's
  position in the epoch (grain's `random_map`), so it is independent of P too.

Evaluation walks a split in order, in batches of a fixed size padded at the
end, with a `mask` (1 = real example, 0 = padding) so that every batch compiles
to the same shape; processes slice each global batch by the same rule.

Every example reaches its dataset's `preprocess` with its index in the split,
so a malformed example (e.g. a label map with an out-of-range class) is
reported by index in the one-line DataError, in training as in evaluation.

Outputs are numpy: `image` float32 [L, H, W, C] in [0, 1] (not normalised;
the model does that with `DatasetInfo.mean/std`), `label` int32 [L] or
[L, H, W]. Turning host batches into global sharded arrays is the job of
`advjax.parallel`.
"""

import math
from typing import Iterator

import grain
import numpy as np

from advjax import errors
from advjax.data import datasets
from advjax.data.info import DatasetInfo


def get_info(data_cfg) -> DatasetInfo:
  """Static description of the dataset named by `data_cfg.name`.

  Args:
    data_cfg: ConfigDict with `name`, `data_dir`, `image_size`,
      `class_subset`, `augment`.

  Returns:
    The DatasetInfo after any class subset and resizing.

  Raises:
    ConfigError: unknown dataset name or invalid field.
    DataError: a tfds dataset is not prepared in `data_dir`.
  """
  return datasets.lookup(data_cfg).info(data_cfg)


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise errors.ConfigError(f"process_index={process_index} must be in [0, process_count={process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise errors.ConfigError(
        f"batch size {batch_size} must be a positive multiple of process_count={process_count}")
  return batch_size // process_count


def _epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed (grain's limit) mixing (seed, epoch) so no two pairs collide in practice."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class TrainSource:
  """Training batches by step: `batch(t)` is a pure function of (config, seed, t).

  Attributes:
    info: DatasetInfo of the dataset.
    global_batch_size: G, examples per step over all processes.
    local_batch_size: L = G / process_count, rows returned by `batch`.
    steps_per_epoch: num_train // G.
  """

  def __init__(self, data_cfg, *, global_batch_size: int, seed: int, process_index: int, process_count: int,
               augmented_view: bool = False):
    self._dataset = datasets.lookup(data_cfg)
    self._augmented_view = augmented_view
    if augmented_view and not datasets.field(data_cfg, "augment"):
      raise errors.ConfigError("an augmented view ('image_aug', fine-grained AdvProp) needs data.augment = True")
    self._cfg = data_cfg
    self.info = self._dataset.info(data_cfg)
    self._source = self._dataset.split(data_cfg, "train")
    self.global_batch_size = global_batch_size
    self.local_batch_size = _local_batch_size(global_batch_size, process_index, process_count)
    self._process_index = process_index
    self._process_count = process_count
    self._seed = seed
    self.steps_per_epoch = len(self._source) // global_batch_size
    if self.steps_per_epoch == 0:
      raise errors.ConfigError(
          f"global batch size {global_batch_size} exceeds the {len(self._source)} training examples of "
          f"{self.info.name!r}")

  def _epoch_batches(self, epoch: int) -> grain.MapDataset:
    """The epoch's local batches; entry s*P + p is process p's part of step s."""
    seed = _epoch_seed(self._seed, epoch)
    # Each example travels with its index in the split, which names it in data errors.
    ds = grain.MapDataset.source(self._source).map_with_index(lambda i, ex: (i, ex)).shuffle(seed=seed)
    ds = ds[: self.steps_per_epoch * self.global_batch_size]
    if self._augmented_view:
      ds = ds.random_map(self._with_augmented_view, seed=seed)
    elif datasets.field(self._cfg, "augment"):
      ds = ds.random_map(lambda item, rng: self._preprocess(item, rng), seed=seed)
    else:
      ds = ds.map(lambda item: self._preprocess(item, None))
    return ds.batch(self.local_batch_size, drop_remainder=True)

  def _preprocess(self, item, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    index, example = item
    return self._dataset.preprocess(example, self._cfg, rng, index=index)

  def _with_augmented_view(self, item, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The un-augmented example plus 'image_aug', the same image under the training augmentation."""
    out = self._preprocess(item, None)
    out["image_aug"] = self._preprocess(item, rng)["image"]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch at `step`.

    Args:
      step: global training step, >= 0; step t falls in epoch t // steps_per_epoch.

    Returns:
      dict(image=float32 [L, H, W, C] in [0, 1], label=int32 [L] or [L, H, W]);
      with the augmented view, 'image' is not augmented and 'image_aug' is.
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, step_in_epoch = divmod(int(step), self.steps_per_epoch)
    return self._epoch_batches(epoch)[step_in_epoch * self._process_count + self._process_index]

  def iterate(self, start_step: int, num_steps: int, num_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Yields `batch(t)` for t in [start_step, start_step + num_steps), prefetched by threads.

    The same batches as calling `batch` step by step (grain keeps the order);
    threads overlap the decoding of consecutive steps.
    """
    steps = grain.MapDataset.range(start_step, start_step + num_steps).map(self.batch)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    return iter(steps.to_iter_dataset(options))


def make_train_source(data_cfg, *, global_batch_size: int, seed: int, process_index: int = 0,
                      process_count: int = 1, augmented_view: bool = False) -> TrainSource:
  """The deterministic training stream of `data_cfg` for one process.

  Args:
    data_cfg: ConfigDict with `name`, `data_dir`, `image_size`,
      `class_subset`, `augment`.
    global_batch_size: G, examples per step summed over processes.
    seed: fixes the epoch permutations and the augmentation.
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide G.
    augmented_view: batches hold the un-augmented 'image' and its augmented
      view 'image_aug' (fine-grained AdvProp, Xie thesis sec. 7.5.4, with the
      dataset's augmentation in place of AutoAugment); needs `augment`.

  Returns:
    A TrainSource whose `batch(t)` gives rows [p*L, (p+1)*L) of global batch t.

  Raises:
    ConfigError: an augmented view without `augment`, or a bad batch size.
  """
  return TrainSource(data_cfg, global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                     process_count=process_count, augmented_view=augmented_view)


def check_split(data_cfg, split: str) -> None:
  """Opens a split of the dataset, so that a split it lacks is one ConfigError before any work starts."""
  datasets.lookup(data_cfg).split(data_cfg, split)


def make_eval_batches(data_cfg, split: str, *, batch_size: int, process_index: int = 0,
                      process_count: int = 1, num_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over a whole split in order, in padded batches of fixed shape.

  Global batch k holds examples [k*B, (k+1)*B) of the split, the last one
  padded with zero images; process p receives rows [p*L, (p+1)*L). The
  dataset is opened (and a missing one reported) before this returns.

  Args:
    data_cfg: ConfigDict with `name`, `data_dir`, `image_size`,
      `class_subset`.
    split: 'train', 'test', or for tfds datasets any tfds split string.
    batch_size: B, global examples per batch.
    process_index: this process, in [0, process_count).
    process_count: number of processes; must divide B.
    num_threads: threads decoding examples ahead of the consumer.

  Returns:
    An iterator over ceil(n / B) dicts: image float32 [L, H, W, C] in [0, 1],
    label int32 [L] or [L, H, W] (0, or -1 for dense labels, on padding rows),
    mask float32 [L] (1 = real example, 0 = padding).
  """
  dataset = datasets.lookup(data_cfg)
  info = dataset.info(data_cfg)
  source = dataset.split(data_cfg, split)
  local = _local_batch_size(batch_size, process_index, process_count)
  num_examples = len(source)
  num_batches = math.ceil(num_examples / batch_size)
  label_shape = info.image_shape[:2] if info.dense_labels else ()
  padding = {
      "image": np.zeros(info.image_shape, np.float32),
      "label": np.full(label_shape, -1 if info.dense_labels else 0, np.int32),
      "mask": np.float32(0.0),
  }

  def load(row: int) -> dict[str, np.ndarray]:
    k, r = divmod(row, local)
    index = k * batch_size + process_index * local + r
    if index >= num_examples:
      return padding
    return {**dataset.preprocess(source[index], data_cfg, None, index=index), "mask": np.float32(1.0)}

  rows = grain.MapDataset.range(num_batches * local).map(load).batch(local)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
  return iter(rows.to_iter_dataset(options))
