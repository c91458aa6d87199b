"""The 'synthesis' evaluator on real digit canvases, a tiny segmentation model and a tiny saved classifier run.

Its numbers are checked against direct calls of `advjax.attacks.synthesis`
with the keys the evaluator documents, scored in NumPy; the classifier proxy
against crops cut by hand from the canvases' known layout and classified by
the saved model; the PNG against its documented size and colours.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from advjax import data, evaluation, run_dir, saved_runs, tasks
from advjax.attacks import make_logits_fn, synthesis as synthesis_lib
from advjax.data import embedded
from advjax.errors import ConfigError
from advjax.evaluation import synthesis
from advjax.models import create_model
from tests.attacks import tiny_models

K = 11
CANVASES = (0, 1, 2, 3, 4, 5)  # Test-split canvases used as the held-out data.
# Long L2 steps (4 on the [0, 1] scale), so three of them visibly repaint a 16x16 square.
ENTRY = dict(type="synthesis", num_images=5, mask_frac=0.25, synthesis=dict(num_steps=3, step_size=1020.0, penalty=2.0),
             scale=1)


MODEL = tiny_models.TinySeg(K)
model_fn = tiny_models.builder(MODEL)


@pytest.fixture(scope="module")
def variables():
  rng = np.random.default_rng(0)
  kernel = rng.normal(0.0, 0.5, (3, 3, 1, K))
  kernel[1, 1, 0, 1:] += 3.0  # Ink pushes towards the digit classes.
  bias = np.zeros(K)
  bias[0] = 1.5               # Dark pixels are background.
  return {"params": {"Conv_0": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}}}


@pytest.fixture(scope="module")
def canvases():
  c = embedded.mnist_seg_canvases("test")
  return c.image[list(CANVASES)], c.label[list(CANVASES)]


@pytest.fixture(scope="module")
def batches(canvases):
  """Two batches of 4: six real canvases, then two padding rows."""
  x, y = canvases
  x = np.concatenate([x, np.ones_like(x[:2])])
  y = np.concatenate([y, np.full_like(y[:2], 3)])
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
  return [{"image": jnp.asarray(x[i:i + 4]), "label": jnp.asarray(y[i:i + 4]), "mask": jnp.asarray(mask[i:i + 4])}
          for i in (0, 4)]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  """A run directory holding an untrained convnet_tiny MNIST classifier (config.json + one checkpoint)."""
  workdir = str(tmp_path_factory.mktemp("classifier"))
  config = {"model": {"name": "convnet_tiny", "activation": "relu", "norm": "batchnorm", "dtype": "float32",
                      "head": "classifier", "insert_block": "", "insert_after": "stages", "backbone_checkpoint": "",
                      "freeze_backbone": False},
            "data": {"name": "mnist_embedded", "augment": False, "class_subset": 0, "data_dir": "", "image_size": 0}}
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  info = data.get_info(ml_collections.ConfigDict(config["data"]))
  model = create_model("convnet_tiny", num_classes=10, mean=info.mean, std=info.std)
  init = model.init({"params": jax.random.key(5), "dropout": jax.random.key(5)}, jnp.zeros((1, 28, 28, 1)),
                    train=False)
  # Distinct running statistics, so a loader that ignored them would be caught.
  init = {**init, "batch_stats": jax.tree.map(lambda v: v + 0.3, init["batch_stats"])}
  state = {"params": init["params"], "model_state": {"batch_stats": init["batch_stats"]}, "step": jnp.int32(7)}
  saver = run_dir.Checkpointer(workdir)
  saver.save(7, state, wait=True)
  return workdir, model, init


def _ctx(batches, out_dir=None, task=None):
  return evaluation.EvalContext(task=task or tasks.Segmentation(K), model_fn=model_fn, held_out=lambda: batches,
                                train_stream=None, image_shape=(64, 64, 1), rng=jax.random.key(11), out_dir=out_dir)


def _np_mse(a, b, region):
  out = []
  for i in range(len(a)):
    sel = region[i] > 0
    if sel.any():
      out.append(np.mean((a[i][sel].astype(np.float64) - b[i][sel]) ** 2))
  return np.mean(out)


def test_load_model_restores_the_saved_classifier(classifier_run):
  workdir, model, init = classifier_run
  loaded_model, variables, info = saved_runs.load_model(workdir, "test")
  assert tuple(info.image_shape) == (28, 28, 1) and info.num_classes == 10
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(init)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  x = jnp.asarray(data.mnist_arrays()[2][:4])
  np.testing.assert_allclose(np.asarray(make_logits_fn(loaded_model, variables)(x)),
                             np.asarray(make_logits_fn(model, init)(x)), rtol=1e-5, atol=1e-5)


def test_layout_crops_and_the_eval_pipeline_agree_with_the_canvases():
  cfg = ml_collections.ConfigDict(dict(name="mnist_seg_embedded", augment=False, class_subset=0, data_dir="",
                                       image_size=0))
  batch = next(iter(data.make_eval_batches(cfg, "test", batch_size=8, process_index=0, process_count=1)))
  c = embedded.mnist_seg_canvases("test")
  classes, offsets = synthesis.canvas_layout(np.asarray(batch["image"]))  # The pipeline's pixels match exactly.
  test_labels = data.mnist_arrays()[3]
  np.testing.assert_array_equal(classes, np.where(c.digit_index[:8] >= 0, test_labels[c.digit_index[:8]], -1))
  np.testing.assert_array_equal(offsets, c.offset[:8])
  # A canvas with one digit: its crop is the MNIST digit itself.
  single = int(np.flatnonzero((c.digit_index >= 0).sum(1) == 1)[0])
  crop = synthesis.digit_crops(c.image[single:single + 1], c.offset[single:single + 1],
                               np.where(c.digit_index[single:single + 1] >= 0, 0, -1))
  np.testing.assert_array_equal(crop[0], data.mnist_arrays()[2][c.digit_index[single, 0]])
  with pytest.raises(ConfigError, match="not one of the embedded digit canvases"):
    synthesis.canvas_layout(np.asarray(batch["image"]) * 0.5)


def test_evaluator_matches_direct_calls_numpy_and_classifier(batches, canvases, variables, classifier_run,
                                                             tmp_path):
  workdir, cls_model, cls_vars = classifier_run
  ctx = _ctx(batches, out_dir=str(tmp_path))
  entry = dict(ENTRY, classifier_run=workdir, png_images=4)
  result = evaluation.run({"syn": entry}, ctx, variables)["syn"]
  n = ENTRY["num_images"]
  x, y = canvases[0][:n], canvases[1][:n]
  side = round(0.25 * 64)
  assert result["num_images"] == n and result["mask_side"] == side

  # The same images by direct calls with the documented keys.
  k_mask, k_syn = jax.random.split(ctx.key("syn"))
  masks = np.asarray(synthesis_lib.square_masks(k_mask, jnp.asarray(y), side))
  fn = model_fn(variables)
  cfg = dict(num_steps=3, step_size=1020.0, step_rule="l2", penalty=2.0)
  images = {"original": x, "corrupted": np.asarray(synthesis_lib.start_image(jnp.asarray(x), jnp.asarray(masks)))}
  for c in ("soft", "hard"):
    images[f"inpaint_{c}"] = np.asarray(synthesis_lib.inpaint(
        fn, jnp.asarray(x), jnp.asarray(masks), jnp.asarray(y), k_syn, synthesis_lib.SynthesisConfig(**cfg,
                                                                                                     constraint=c)))
  images["generated"] = np.asarray(synthesis_lib.generate(fn, jnp.asarray(x), jnp.asarray(y), k_syn,
                                                          synthesis_lib.SynthesisConfig(**cfg)))
  for name, image in images.items():
    pred = np.asarray(fn(jnp.asarray(image))).argmax(-1)
    assert result[name]["pixel_accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-6), name
  for name in ("corrupted", "inpaint_soft", "inpaint_hard"):
    assert result[name]["masked_mse"] == pytest.approx(_np_mse(images[name], x, masks), rel=1e-5), name
  for name in ("inpaint_soft", "inpaint_hard"):
    assert result[name]["unmasked_mse"] == pytest.approx(_np_mse(images[name], x, 1 - masks), rel=1e-5, abs=1e-12)
  assert result["inpaint_hard"]["unmasked_mse"] == 0.0
  assert 0 < result["inpaint_soft"]["unmasked_mse"] < result["inpaint_soft"]["masked_mse"]
  # PGD moved the masked region and raised the model's agreement with y.
  for name in ("inpaint_soft", "inpaint_hard"):
    assert result[name]["masked_mse"] != result["corrupted"]["masked_mse"]
    assert result[name]["pixel_accuracy"] > result["corrupted"]["pixel_accuracy"]
  mean_image = np.asarray(synthesis_lib.start_image(jnp.asarray(x), jnp.ones(y.shape)))
  assert result["generated"]["pixel_accuracy"] > np.mean(np.asarray(fn(jnp.asarray(mean_image))).argmax(-1) == y)

  # Classifier proxy: crops cut from the known layout of these canvases, classified by the saved model.
  c = embedded.mnist_seg_canvases("test")
  digit_labels = data.mnist_arrays()[3]
  cls_fn = make_logits_fn(cls_model, cls_vars)
  crops = {name: [] for name in images}
  truth, hit = [], []
  for i in range(n):
    for k in np.flatnonzero(c.digit_index[CANVASES[i]] >= 0):
      t, l = c.offset[CANVASES[i], k]
      d = digit_labels[c.digit_index[CANVASES[i], k]]
      truth.append(d)
      hit.append(bool(((masks[i, t:t + 28, l:l + 28] > 0) & (y[i, t:t + 28, l:l + 28] == d + 1)).any()))
      for name, image in images.items():
        crops[name].append(image[i, t:t + 28, l:l + 28])
  truth, hit = np.asarray(truth), np.asarray(hit)
  acc = {name: np.asarray(cls_fn(jnp.asarray(np.stack(v)))).argmax(-1) == truth for name, v in crops.items()}
  got = result["classifier"]
  assert got["num_digits"] == len(truth) and got["num_masked_digits"] == hit.sum() > 0
  assert got["original"] == pytest.approx(acc["original"].mean())
  assert got["generated"] == pytest.approx(acc["generated"].mean())
  for name in ("original", "corrupted", "inpaint_soft", "inpaint_hard"):
    key = "original_masked" if name == "original" else name
    assert got[key] == pytest.approx(acc[name][hit].mean()), name

  # The PNG: rows original, labels, corrupted, soft, hard, generated; one 64x64 column for each of the
  # first png_images images, 1 px padding.
  assert result["path"] == os.path.join(str(tmp_path), "syn.png")
  png = np.asarray(Image.open(result["path"]).convert("RGB"))
  assert png.shape == (6 * 65 + 1, 4 * 65 + 1, 3)
  np.testing.assert_array_equal(png[66:66 + 64, 1:65], data.colorize(y[0]))
  np.testing.assert_array_equal(png[1 + 2 * 65:1 + 2 * 65 + 64, 1:65, 0], np.round(images["corrupted"][0, ..., 0] * 255))
  # Every value reaches metrics.jsonl as a flat scalar.
  assert "syn/classifier/inpaint_hard" in evaluation.scalars({"syn": result})


def test_argument_and_task_errors(batches, variables):
  for bad, field in ((dict(mask_frac=0.0), "mask_frac"), (dict(constraints=("soft", "soft")), "constraints"),
                     (dict(constraints=()), "constraints"), (dict(synthesis=dict(step_rule="momentum")), "step_rule"),
                     (dict(synthesis=dict(penalty=-1.0)), "penalty"), (dict(num_images=0), "num_images"),
                     (dict(png_images=0), "png_images"), (dict(steps=3), "'steps' is now 'synthesis.num_steps'"),
                     (dict(synthesis=dict(fill="zero")), "fill"), (dict(eps=8.0), "eps")):
    with pytest.raises(ConfigError, match=field):
      evaluation.parse({"s": dict(ENTRY, **bad)})
  with pytest.raises(ConfigError, match="needs a segmentation task"):
    evaluation.run({"s": ENTRY}, _ctx(batches, task=tasks.Classification(10)), variables)


def test_no_output_directory_draws_nothing(batches, variables):
  result = evaluation.run({"s": dict(ENTRY, num_images=2, constraints=("hard",), synthesis=dict(num_steps=1))},
                          _ctx(batches),
                          variables)["s"]
  assert result["path"] is None and "classifier" not in result and "inpaint_soft" not in result
  assert result["inpaint_hard"]["unmasked_mse"] == 0.0
