"""Dense label maps through every adversary and evaluation, checked against NumPy.

A tiny fully convolutional model labels each pixel of 8x8 digit images with
one of three classes (background, thin stroke, thick stroke); the label maps
carry ignored (-1) pixels. PGD with restarts, the heap adversary and the
universal adversary toward a target map run on them unchanged, and the
evaluation's pixel accuracy and mean IoU equal a NumPy recomputation on the
same adversarial images.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advjax import evaluation, tasks
from advjax.attacks import heap, make_logits_fn, universal
from advjax.attacks import pgd as pgd_lib
from advjax.data.segmentation import colorize
from advjax.errors import ConfigError
from advjax.evaluation import universal_robustness as universal_eval
from advjax.evaluation.context import name_to_int
from tests.attacks import tiny_models

K = 3
KEY = jax.random.key(5)


class TinyFCN(nn.Module):
  """conv3x3(8) - relu - conv3x3(8) - relu - conv1x1(K): logits [B, H, W, K]."""

  @nn.compact
  def __call__(self, x, train: bool = False, use_batch_stats: bool | None = None):
    del train, use_batch_stats
    x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
    x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
    return nn.Conv(K, (1, 1))(x).astype(jnp.float32)


def _label_maps(x):
  """0 background, 1 faint ink, 2 strong ink; an ignored band in the middle row."""
  y = np.where(x[..., 0] > 0.6, 2, np.where(x[..., 0] > 0.1, 1, 0)).astype(np.int32)
  y[:, 4, :] = -1
  return y


@pytest.fixture(scope="module")
def fcn():
  """(logits_fn, x [32, 8, 8, 1], y [32, 8, 8]) after a few Adam steps."""
  import optax
  x_train, _, x_test, _ = tiny_models.digits()
  y_train = _label_maps(x_train)
  model = TinyFCN()
  params = model.init(jax.random.key(0), jnp.asarray(x_train[:2]))
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  task = tasks.Segmentation(K)

  @jax.jit
  def step(params, opt, x, y):
    grads = jax.grad(lambda p: jnp.mean(task.loss(model.apply(p, x), y)))(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt

  rng = np.random.default_rng(0)
  for _ in range(60):
    idx = rng.choice(len(x_train), 128, replace=False)
    params, opt = step(params, opt, x_train[idx], y_train[idx])
  x = jnp.asarray(x_test[:32])
  return make_logits_fn(model, params), x, jnp.asarray(_label_maps(np.asarray(x)))


def _np_scores(logits, y):
  """(per-image fooled fraction, confusion matrix) in NumPy."""
  pred = np.asarray(logits).argmax(-1)
  y = np.asarray(y)
  valid = y >= 0
  fooled = ((pred != y) & valid).sum((1, 2)) / np.maximum(valid.sum((1, 2)), 1)
  confusion = np.zeros((K, K))
  np.add.at(confusion, (y[valid], pred[valid]), 1)
  return fooled, confusion


def test_the_model_segments(fcn):
  logits_fn, x, y = fcn
  _, confusion = _np_scores(logits_fn(x), y)
  assert np.trace(confusion) / confusion.sum() > 0.9


def test_pgd_with_restarts_on_label_maps(fcn):
  logits_fn, x, y = fcn
  cfg = pgd_lib.pgd(24.0, step_size=6.0, num_steps=4, restart_select="misclassified")
  one = pgd_lib.attack(logits_fn, x, y, KEY, cfg)
  many = pgd_lib.attack(logits_fn, x, y, KEY, dataclasses.replace(cfg, restarts=3))
  for x_adv in (one, many):
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 24 / 255 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  fooled_one, _ = _np_scores(logits_fn(one), y)
  fooled_many, _ = _np_scores(logits_fn(many), y)
  # Restart 0 is the single run; per image the kept restart fools at least as many pixels.
  assert np.all(fooled_many >= fooled_one - 1e-6) and np.any(fooled_many > fooled_one)
  # The task's success is the fooled fraction of an image's valid pixels.
  np.testing.assert_allclose(tasks.Segmentation(K).success(logits_fn(many), y, y, False), fooled_many, rtol=1e-6)


def test_attacked_evaluation_matches_numpy(fcn):
  logits_fn, x, y = fcn
  mask = (jnp.arange(32) < 27).astype(jnp.float32)
  batches = [{"image": x, "label": y, "mask": mask}]
  cfg = pgd_lib.pgd(24.0, step_size=6.0, num_steps=4)
  result = evaluation.attacked_metrics(logits_fn, batches, cfg, KEY, task=tasks.Segmentation(K))
  x_adv = pgd_lib.attack(logits_fn, x, y, jax.random.fold_in(KEY, 0), cfg, task=tasks.Segmentation(K))
  for name, images in (("clean", x), ("adversarial", x_adv)):
    _, confusion = _np_scores(logits_fn(images[:27]), y[:27])
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    assert result[name]["pixel_accuracy"] == pytest.approx(inter.sum() / confusion.sum())
    assert result[name]["miou"] == pytest.approx(np.mean(inter[union > 0] / union[union > 0]))
    assert result[name]["num_examples"] == 27
  assert result["adversarial"]["miou"] < result["clean"]["miou"] - 0.1


def test_heap_adversary_on_label_maps(fcn):
  logits_fn, x, y = fcn
  cfg = pgd_lib.pgd(24.0, step_size=6.0, num_steps=3)
  np.testing.assert_array_equal(np.asarray(heap.heap_attack(logits_fn, x, y, KEY, cfg, 1)),
                                np.asarray(pgd_lib.attack(logits_fn, x, y, KEY, cfg)))
  x_adv = heap.heap_attack(logits_fn, x, y, KEY, cfg, 8)
  delta = np.asarray(x_adv - x).reshape(4, 8, 8, 8, 1)
  # One perturbation per heap: wherever the box did not clip a member, the members agree.
  free = (np.asarray(x_adv) > 0) & (np.asarray(x_adv) < 1)
  free = free.reshape(delta.shape)
  high = np.where(free, delta, -np.inf).max(axis=1)
  low = np.where(free, delta, np.inf).min(axis=1)
  both = free.sum(axis=1) >= 2
  assert both.sum() > 100 and np.all((high - low)[both] <= 1e-6)
  fooled, _ = _np_scores(logits_fn(x_adv), y)
  clean, _ = _np_scores(logits_fn(x), y)
  assert fooled.mean() > clean.mean() + 0.05


def test_universal_perturbation_toward_a_target_map(fcn):
  logits_fn, x, y = fcn
  target = np.asarray(y[0]).copy()
  target[target < 0] = 0
  target = np.where(np.arange(8)[None, :] < 4, 2, target)  # A scene: the left half 'strong ink'.
  batches = [{"image": x[i:i + 8], "label": y[i:i + 8], "mask": jnp.ones(8)} for i in range(0, 32, 8)]
  cfg = universal.UniversalConfig(eps=128.0, step_size=16.0, num_steps=16, targeted=True, loss="cross_entropy")
  delta = universal.universal_perturbation(logits_fn, batches, KEY, cfg, (8, 8, 1), target=jnp.asarray(target))
  assert float(jnp.max(jnp.abs(delta))) <= 128 / 255 + 1e-6
  report = universal_eval.evaluate_universal(logits_fn, batches, delta, target=target)
  before = universal_eval.evaluate_universal(logits_fn, batches, 0 * delta, target=target)
  # Pixel accuracy against the target map, recomputed in NumPy.
  pred = np.asarray(logits_fn(jnp.clip(x + delta, 0, 1))).argmax(-1)
  assert report["target"]["pixel_accuracy"] == pytest.approx(np.mean(pred == target[None]))
  assert report["target"]["pixel_accuracy"] > before["target"]["pixel_accuracy"] + 0.1


def test_targeted_universal_on_constant_maps_equals_the_classification_adversary(logits_fn, batch):
  """A segmentation model whose every pixel carries the classifier's logits, labels constant per image:
  the dense loss is the classification loss, so both adversaries take the same steps."""
  x, y = batch

  def dense_fn(images):
    return jnp.broadcast_to(logits_fn(images)[:, None, None, :], images.shape[:3] + (10,))

  maps = jnp.broadcast_to(y[:, None, None], (32, 8, 8))
  cfg = universal.UniversalConfig(eps=32.0, step_size=4.0, num_steps=5, targeted=True, target_class=3,
                                  loss="cross_entropy")
  flat = universal.universal_perturbation(logits_fn, [{"image": x, "label": y}], KEY, cfg, (8, 8, 1))
  dense = universal.universal_perturbation(dense_fn, [{"image": x, "label": maps}], KEY, cfg, (8, 8, 1))
  np.testing.assert_allclose(np.asarray(dense), np.asarray(flat), atol=1e-6)
  by_map = universal.universal_perturbation(dense_fn, [{"image": x, "label": maps}], KEY, cfg, (8, 8, 1),
                                            target=jnp.full((8, 8), 3))
  np.testing.assert_allclose(np.asarray(by_map), np.asarray(flat), atol=1e-6)
  assert float(jnp.max(jnp.abs(flat))) > 0


def _constant_builder(logits_fn, variables):
  del variables
  return logits_fn


def _segmentation_context(fcn, out_dir):
  """An EvalContext on the tiny FCN: training stream from x[:16] (order fixed by the name), held out x[16:]."""
  logits_fn, x, y = fcn

  def train_stream(batch_size, name):
    def batches():
      order = np.random.default_rng(name_to_int(name)).permutation(16)
      for start in range(0, 16 - batch_size + 1, batch_size):
        idx = order[start:start + batch_size]
        yield {"image": x[idx], "label": y[idx], "mask": jnp.ones(batch_size)}
    return batches

  held_out = [{"image": x[i:i + 8], "label": y[i:i + 8], "mask": jnp.ones(8)} for i in (16, 24)]
  return evaluation.EvalContext(task=tasks.Segmentation(K), model_fn=functools.partial(_constant_builder, logits_fn),
                                held_out=lambda: held_out, train_stream=train_stream, image_shape=(8, 8, 1),
                                rng=KEY, out_dir=out_dir)


def test_eps_uni_toward_a_static_target_scene(fcn, tmp_path):
  """The evaluator's target is the first map of its named training stream, its rate measured on max_examples."""
  logits_fn, x, y = fcn
  ctx = _segmentation_context(fcn, str(tmp_path))
  cfg = dataclasses.replace(universal.shared_at_eval_config(num_steps=12, loss="cross_entropy"),
                            targeted=True, target_class=-1)
  entry = dict(type="eps_uni", rate=0.7, search_steps=5, batch_size=4, max_examples=12,
               universal=dataclasses.asdict(cfg), target_scene=True, figure_images=3, ignore_class=0)
  variables = {"unused": jnp.zeros(())}
  result = evaluation.run({"uni": entry}, ctx, variables)["uni"]

  target = np.asarray(next(iter(ctx.train_stream(1, "uni/target_scene")()))["label"][0])
  first_12 = [ctx.held_out()[0], {**ctx.held_out()[1], "mask": jnp.asarray([1.0] * 4 + [0.0] * 4)}]
  expected = universal_eval.eps_uni_search(logits_fn, ctx.train_stream(4, "uni"), first_12, ctx.key("uni"), cfg,
                                           target_rate=0.7, num_steps=5, task=ctx.task, target=target,
                                           ignore_class=0)
  assert result["found"] and result["eps"] == expected.eps > 0
  # The saved perturbation reaches the rate on those 12 images: pixel accuracy against the scene's
  # non-background pixels (ignore_class=0), in NumPy.
  delta = np.load(tmp_path / "uni.npy")
  pred = np.asarray(logits_fn(jnp.clip(x[16:28] + delta, 0, 1))).argmax(-1)
  valid = np.broadcast_to(target > 0, pred.shape)
  assert 0 < valid.mean() < 0.9
  assert np.mean((pred == target)[valid]) >= 0.7
  clean = np.asarray(logits_fn(x[16:28])).argmax(-1)
  assert np.mean((clean == target)[valid]) < 0.7
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "uni_target.png").convert("RGB")), colorize(target))
  assert Image.open(result["figure"]).size == (5 * 128, 3 * 128 + 24)


def test_per_example_targets_equal_to_one_scene_give_that_scenes_perturbation(fcn):
  """Targets carried by the batches (the dynamic target's path) are the same computation as one
  static map passed as `target`, when every example's target is that map."""
  logits_fn, x, y = fcn
  cfg = universal.UniversalConfig(eps=32.0, step_size=4.0, num_steps=4, targeted=True, target_class=-1,
                                  loss="cross_entropy")
  scene = y[0]
  batches = [{"image": x[:16], "label": y[:16]}]
  static = universal.universal_perturbation(logits_fn, batches, KEY, cfg, (8, 8, 1), target=scene)
  carried = universal.universal_perturbation(
      logits_fn, [{**b, "target": jnp.broadcast_to(scene, b["label"].shape)} for b in batches], KEY, cfg, (8, 8, 1))
  np.testing.assert_array_equal(np.asarray(carried), np.asarray(static))
  assert float(jnp.max(jnp.abs(static))) > 0


def test_eps_uni_toward_dynamic_targets_hiding_a_class(fcn, tmp_path):
  """hide_class: each image's target is its own map with a class hidden (here the background,
  which takes the label of the nearest ink); the rate reported is the pixel accuracy against
  `labels.hide_class` of the held-out maps, recomputed in NumPy with the saved perturbation."""
  from advjax.tasks import labels
  logits_fn, x, y = fcn
  ctx = _segmentation_context(fcn, str(tmp_path))
  cfg = dataclasses.replace(universal.shared_at_eval_config(num_steps=12, loss="cross_entropy"),
                            targeted=True, target_class=-1)
  entry = dict(type="eps_uni", rate=0.6, search_steps=5, batch_size=4, universal=dataclasses.asdict(cfg),
               hide_class=0, figure_images=2)
  result = evaluation.run({"uni": entry}, ctx, {"unused": jnp.zeros(())})["uni"]
  assert result["found"] and 0 < result["eps"] < 255
  targets = labels.hide_class(np.asarray(y[16:32]), 0)
  assert not (targets == 0).any()
  valid = targets >= 0
  delta = np.load(tmp_path / "uni.npy")
  pred = np.asarray(logits_fn(jnp.clip(x[16:32] + delta, 0, 1))).argmax(-1)
  assert np.mean((pred == targets)[valid]) == pytest.approx(result["rate"]) and result["rate"] >= 0.6
  clean = np.asarray(logits_fn(x[16:32])).argmax(-1)
  assert np.mean((clean == targets)[valid]) == pytest.approx(result["clean_rate"]) and result["clean_rate"] < 0.6
  assert os.path.exists(result["figure"])
  with pytest.raises(ConfigError, match="hide_class needs a targeted attack"):
    evaluation.parse({"u": dict(type="eps_uni", hide_class=2)})


def test_eps_uni_target_scene_errors(fcn, batch, logits_fn):
  with pytest.raises(ConfigError, match="target_scene needs a targeted attack"):
    evaluation.parse({"u": dict(type="eps_uni", target_scene=True)})
  ctx = _segmentation_context(fcn, None)
  ctx.train_stream = lambda batch_size, name: lambda: iter([{"image": batch[0][:1], "label": batch[1][:1]}])
  targeted = dataclasses.asdict(universal.shared_at_eval_config(loss="cross_entropy", targeted=True,
                                                               target_class=-1))
  with pytest.raises(ConfigError, match="target_scene needs label maps"):
    evaluation.run({"u": dict(type="eps_uni", target_scene=True, universal=targeted)}, ctx, {})


def test_eps_adv_on_the_first_examples(fcn):
  logits_fn, _, _ = fcn
  ctx = _segmentation_context(fcn, None)
  entry = dict(type="eps_adv", rate=0.5, search_steps=4, attack=dict(num_steps=5), max_examples=10)
  result = evaluation.run({"adv": entry}, ctx, {"unused": jnp.zeros(())})["adv"]
  first_10 = [ctx.held_out()[0], {**ctx.held_out()[1], "mask": jnp.asarray([1.0] * 2 + [0.0] * 6)}]
  expected = evaluation.eps_adv_search(logits_fn, first_10, ctx.key("adv"), evaluation.eps_adv_config(5, 4.0, 0.975),
                                       target_rate=0.5, num_steps=4, task=ctx.task)
  everything = evaluation.eps_adv_search(logits_fn, ctx.held_out(), ctx.key("adv"),
                                         evaluation.eps_adv_config(5, 4.0, 0.975), target_rate=0.5, num_steps=4,
                                         task=ctx.task)
  assert result["eps"] == expected.eps
  assert result["clean_rate"] == expected.clean_rate != everything.clean_rate
  # Without the background (class 0): the clean error rate over the other pixels, in NumPy.
  digits = evaluation.run({"adv": dict(entry, ignore_class=0)}, ctx, {"unused": jnp.zeros(())})["adv"]
  x, y = fcn[1][16:26], np.asarray(fcn[2][16:26])
  pred = np.asarray(logits_fn(x)).argmax(-1)
  assert digits["clean_rate"] == pytest.approx(np.mean((pred != y)[y > 0]), abs=1e-6)
  assert digits["clean_rate"] != pytest.approx(result["clean_rate"], abs=1e-3)
