"""Tasks against NumPy: dense losses, correctness, attack success, targets, accuracy and mIoU.

The segmentation checks include a batch whose size equals the image width,
the shape coincidence under which the old classification-only accuracy
silently broadcast label maps against predictions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from advjax import tasks
from advjax.errors import ConfigError

K = 4


def _dense(seed=0, batch=5, height=3, width=5):
  """Random logits [B, H, W, K] and label maps with ignored (-1) pixels; batch == width by default."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, height, width, K)).astype(np.float32)
  labels = rng.integers(0, K, size=(batch, height, width)).astype(np.int32)
  labels[rng.uniform(size=labels.shape) < 0.2] = -1
  labels[0] = -1  # An image without a valid pixel.
  return logits, labels


def _np_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0]


def _np_mean_valid(values, labels):
  valid = labels >= 0
  axes = tuple(range(1, values.ndim))
  return (values * valid).sum(axes) / np.maximum(valid.sum(axes), 1)


def test_dense_loss_correctness_and_success_match_numpy():
  logits, labels = _dense()
  task = tasks.Segmentation(K)
  np.testing.assert_allclose(task.loss(logits, labels), _np_mean_valid(_np_ce(logits, labels), labels),
                             rtol=1e-5)
  pred = logits.argmax(-1)
  np.testing.assert_allclose(task.correct(logits, labels), _np_mean_valid(pred == labels, labels), rtol=1e-6)
  np.testing.assert_allclose(task.success(logits, labels, labels, False),
                             _np_mean_valid(pred != labels, labels), rtol=1e-6)
  targets = (labels + 1) % K
  np.testing.assert_allclose(task.success(logits, labels, targets, True),
                             _np_mean_valid(pred == targets, labels), rtol=1e-6)
  assert task.correct(logits, labels).shape == (5,) and float(task.correct(logits, labels)[0]) == 0.0


def test_class_labels_are_one_position_per_example():
  logits = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]], np.float32)
  task = tasks.Classification(3)
  np.testing.assert_array_equal(task.correct(logits, np.array([0, 0])), [1.0, 0.0])
  np.testing.assert_array_equal(task.success(logits, np.array([0, 0]), np.array([2, 2]), True), [0.0, 1.0])
  assert tasks.for_labels(np.zeros(4)).name == "classification"
  assert tasks.for_labels(np.zeros((4, 2, 2))).name == "segmentation"


def test_random_targets():
  y = jnp.arange(1000) % 10
  t = tasks.Classification(10).random_targets(jax.random.key(0), y, 10)
  assert np.all(np.asarray(t != y)) and set(np.asarray(t).tolist()) == set(range(10))
  _, labels = _dense(seed=1, batch=40)
  maps = np.asarray(tasks.Segmentation(K).random_targets(jax.random.key(1), jnp.asarray(labels), K))
  valid = labels >= 0
  assert np.all(maps[valid] != labels[valid]) and np.all(maps[~valid] == -1)
  # One relabelling per image: target - label is constant mod K over an image's valid pixels.
  shift = (maps - labels) % K
  for b in range(40):
    assert len(set(shift[b][valid[b]].tolist())) <= 1
  assert len({int(shift[b][valid[b]][0]) for b in range(40) if valid[b].any()}) == K - 1


def _np_metrics(logits, labels, mask):
  pred = logits.argmax(-1)
  keep = (labels >= 0) & (mask.reshape(-1, 1, 1) > 0)
  confusion = np.zeros((K, K))
  np.add.at(confusion, (labels[keep], pred[keep]), 1)
  inter = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - inter
  present = union > 0
  return confusion, inter.sum() / confusion.sum(), (inter[present] / union[present]).mean(), present


def test_pixel_accuracy_and_miou_match_numpy_with_padding():
  logits, labels = _dense(seed=2, batch=5, width=5)
  mask = np.array([1, 1, 1, 0, 1], np.float32)  # Example 3 is padding.
  task = tasks.Segmentation(K)
  sums = jax.jit(task.metric_sums)(logits, labels, mask)
  confusion, accuracy, miou, present = _np_metrics(logits, labels, mask)
  np.testing.assert_array_equal(np.asarray(sums["confusion"]), confusion)
  values = task.metric_values(jax.device_get(sums))
  assert values["pixel_accuracy"] == pytest.approx(accuracy)
  assert values["miou"] == pytest.approx(miou)
  assert values["num_examples"] == 4 and values["num_pixels"] == confusion.sum()
  iou = [v for v in values["iou"] if v is not None]
  assert len(iou) == present.sum()
  # A class in neither labels nor predictions has no IoU and is left out of the mean.
  one_class = tasks.Segmentation(3).metric_values(
      {"confusion": np.array([[5.0, 1, 0], [2, 4, 0], [0, 0, 0]]), "images": 1.0})
  assert one_class["iou"][2] is None
  assert one_class["miou"] == pytest.approx((5 / 8 + 4 / 7) / 2)


def test_classification_accuracy_ignores_padding():
  task = tasks.Classification(3)
  logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]], np.float32)
  sums = task.metric_sums(logits, np.array([0, 0, 2]), np.array([1.0, 1.0, 0.0]))
  assert task.metric_values(jax.device_get(sums)) == {"accuracy": 0.5, "num_examples": 2}


def test_confusion_matrix_is_the_same_on_one_and_eight_devices():
  logits, labels = _dense(seed=3, batch=16, height=4, width=6)
  mask = (np.arange(16) < 13).astype(np.float32)
  task = tasks.Segmentation(K)
  single = jax.jit(task.metric_sums)(logits, labels, mask)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  sharded = NamedSharding(mesh, P("data"))
  args = [jax.device_put(a, sharded) for a in (logits, labels, mask)]
  many = jax.jit(task.metric_sums, out_shardings=NamedSharding(mesh, P()))(*args)
  assert len(jax.devices()) == 8
  np.testing.assert_array_equal(np.asarray(many["confusion"]), np.asarray(single["confusion"]))
  np.testing.assert_array_equal(np.asarray(single["confusion"]), _np_metrics(logits, labels, mask)[0])


def test_output_shape_check_names_the_mismatch():
  with pytest.raises(ConfigError, match="segmentation head on a classification dataset"):
    tasks.Classification(10).check_shapes((8, 8, 10), ())
  with pytest.raises(ConfigError, match="does not fit"):
    tasks.Segmentation(11).check_shapes((11,), (64, 64))
  tasks.Segmentation(11).check_shapes((64, 64, 11), (64, 64))


def test_hide_class_relabels_each_pixel_as_its_nearest_other_class_pixel():
  from advjax.tasks import labels
  rng = np.random.default_rng(0)
  maps = rng.integers(0, 3, (4, 9, 7)).astype(np.int32)
  maps[rng.random(maps.shape) < 0.1] = -1
  maps[3] = np.where(maps[3] == 2, 2, -1)  # Only the hidden class and ignored pixels: nothing to hide behind.
  maps[3, 0, 0] = 2
  out = labels.hide_class(maps, 2)
  assert out.dtype == maps.dtype and out.shape == maps.shape
  np.testing.assert_array_equal(out[maps != 2], maps[maps != 2])
  np.testing.assert_array_equal(out[3][maps[3] == 2], -1)
  # Brute force: the label given is that of one of the nearest pixels of another class.
  for m, o in zip(maps[:3], out[:3]):
    sources = np.argwhere((m >= 0) & (m != 2))
    for i, j in np.argwhere(m == 2):
      d = ((sources - [i, j]) ** 2).sum(1)
      nearest = {int(m[a, b]) for a, b in sources[d == d.min()]}
      assert o[i, j] in nearest
  assert (maps[:3] == 2).any() and not (out[:3] == 2).any()
  np.testing.assert_array_equal(labels.hide_class(maps[0], 2), out[0])  # One [H, W] map.
