"""The 'dag' and 'seg_figure' evaluators on a tiny segmentation model and hand-made padded batches.

'dag' is checked against direct calls of `advjax.attacks.dag` with the keys
the evaluator documents, scored by a NumPy confusion matrix over the real
examples' valid pixels; 'seg_figure' against the pixel size and colours of
the PNG it writes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advjax import evaluation, tasks
from advjax.attacks import dag as dag_lib
from advjax.data.segmentation import colorize
from advjax.errors import ConfigError
from tests.attacks import tiny_models

K = 3
ENTRY = dict(type="dag", dag=dict(gamma=8.0, num_steps=25, background_class=0), perm_draws=2)


MODEL = tiny_models.TinySeg(K)
model_fn = tiny_models.builder(MODEL)


@pytest.fixture(scope="module")
def variables():
  """Hand-set weights: the centre tap dominates, so a pixel's class is about its brightest channel."""
  rng = np.random.default_rng(0)
  kernel = rng.normal(0.0, 0.2, (3, 3, 3, K))
  kernel[1, 1] += 4.0 * np.eye(3, K)
  bias = rng.normal(0.0, 0.1, K)
  conv = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
  return {"params": {"Conv_0": conv}}


@pytest.fixture(scope="module")
def batches(variables):
  """Two batches of 4 images 8x8x3; the second has 3 real examples and one padding row.

  Labels are the clean predictions, then edited: ignored (-1) pixels, some
  wrong labels, and a padding row whose labels would count if it were not masked.
  """
  rng = np.random.default_rng(1)
  x = rng.uniform(0.05, 0.95, size=(8, 8, 8, 3)).astype(np.float32)
  y = np.asarray(jnp.argmax(model_fn(variables)(jnp.asarray(x)), -1)).astype(np.int32)
  y[0, 0] = -1
  y[2, :, 5:] = -1
  y[3, 2:4] = (y[3, 2:4] + 1) % K
  y[5, 6] = -1
  mask = np.ones(8, np.float32)
  mask[7] = 0.0
  return [{"image": jnp.asarray(x[i:i + 4]), "label": jnp.asarray(y[i:i + 4]),
           "mask": jnp.asarray(mask[i:i + 4])} for i in (0, 4)]


def _ctx(batches, task=None, out_dir=None):
  return evaluation.EvalContext(task=task or tasks.Segmentation(K), model_fn=model_fn,
                                held_out=lambda: batches,
                                train_stream=lambda batch_size, name: (lambda: iter(())),
                                image_shape=(8, 8, 3), rng=jax.random.key(7), out_dir=out_dir)


def _np_metrics(preds, labels):
  """(pixel accuracy, mIoU) from a NumPy confusion matrix over the valid pixels."""
  preds, labels = np.concatenate(preds), np.concatenate(labels)
  valid = labels >= 0
  confusion = np.zeros((K, K))
  np.add.at(confusion, (labels[valid], preds[valid]), 1)
  hits = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - hits
  return hits.sum() / confusion.sum(), np.mean(hits[union > 0] / union[union > 0])


def _expected(batches, variables, ctx, name, max_examples):
  """The evaluator's numbers, from direct DAG calls on each batch with its documented keys."""
  fn = model_fn(variables)
  cfg = dag_lib.DAGConfig(**ENTRY["dag"])
  preds = {"orig": [], "advr": []} | {d: [] for d in range(ENTRY["perm_draws"])}
  labels, iterations, percept, remaining = [], [], [], []
  left = max_examples
  for i, b in enumerate(batches):
    k_dag, k_perm = jax.random.split(jax.random.fold_in(ctx.key(name), i))
    res = dag_lib.dag(fn, b["image"], b["label"], k_dag, cfg)
    rows = np.flatnonzero(np.asarray(b["mask"]) > 0)[:left]
    left -= len(rows)
    images = {"orig": b["image"], "advr": res.x_adv}
    for d in range(ENTRY["perm_draws"]):
      images[d] = dag_lib.perm_control(jax.random.fold_in(k_perm, d), b["image"], res.perturbation)[1]
    for key, imgs in images.items():
      preds[key].append(np.asarray(fn(imgs)).argmax(-1)[rows])
    labels.append(np.asarray(b["label"])[rows])
    iterations += list(np.asarray(res.iterations)[rows])
    percept += list(np.asarray(res.perceptibility)[rows])
    remaining += list(np.asarray(res.remaining)[rows])
  return preds, labels, np.asarray(iterations), np.asarray(percept), np.asarray(remaining)


@pytest.mark.parametrize("max_examples", [0, 5])
def test_dag_evaluator_matches_direct_calls_and_numpy(batches, variables, max_examples):
  ctx = _ctx(batches)
  result = evaluation.run({"d": dict(ENTRY, max_examples=max_examples)}, ctx, variables)["d"]
  n = 7 if max_examples == 0 else max_examples
  preds, labels, iterations, percept, remaining = _expected(batches, variables, ctx, "d", n)
  assert result["num_examples"] == n and len(iterations) == n
  for key in ("orig", "advr"):
    acc, miou = _np_metrics(preds[key], labels)
    assert result[key]["pixel_accuracy"] == pytest.approx(acc)
    assert result[key]["miou"] == pytest.approx(miou)
    assert result[key]["num_examples"] == n
  perm = [_np_metrics(preds[d], labels) for d in range(ENTRY["perm_draws"])]
  assert result["perm"]["pixel_accuracy"] == pytest.approx(np.mean([p[0] for p in perm]))
  assert result["perm"]["miou"] == pytest.approx(np.mean([p[1] for p in perm]))
  assert result["iterations"] == pytest.approx(iterations.mean())
  assert result["perceptibility"] == pytest.approx(percept.mean(), rel=1e-5)
  assert result["converged"] == pytest.approx(np.mean(remaining == 0))
  # The attack works and the permuted perturbation barely does (table 2.1's pattern).
  assert result["advr"]["miou"] < result["orig"]["miou"] - 0.3
  assert result["perm"]["pixel_accuracy"] > result["advr"]["pixel_accuracy"] + 0.3
  assert 0 < result["iterations"] < ENTRY["dag"]["num_steps"] and 0 < result["converged"] < 1


def test_dag_evaluator_argument_errors(batches):
  for bad, field in ((dict(dag=dict(gamma=-1.0)), "dag.gamma"), (dict(max_examples=-1), "max_examples"),
                     (dict(perm_draws=0), "perm_draws"), (dict(steps=3), "steps"),
                     (dict(max_iter=3), "'max_iter' is now 'dag.num_steps'")):
    with pytest.raises(ConfigError, match=field):
      evaluation.parse({"d": dict(ENTRY, **bad)})


def test_classification_task_is_one_config_error(batches, variables):
  ctx = _ctx(batches, task=tasks.Classification(10))
  for kind in ("dag", "seg_figure"):
    message = rf"config.evals.e: the '{kind}' evaluator needs a segmentation task"
    with pytest.raises(ConfigError, match=message):
      evaluation.run({"e": {"type": kind}}, ctx, variables)


@pytest.mark.parametrize("adversary", ["pgd", "dag"])
def test_seg_figure_writes_the_png(batches, variables, tmp_path, adversary):
  ctx = _ctx(batches, out_dir=str(tmp_path))
  entry = dict(type="seg_figure", num_images=3, adversary=adversary, attack=dict(eps=16.0, num_steps=3),
               dag=dict(gamma=4.0, num_steps=10), panel_px=64)
  result = evaluation.run({"fig": entry}, ctx, variables)["fig"]
  assert result == {"path": str(tmp_path / "fig.png"), "num_images": 3}
  assert (tmp_path / "fig.png").stat().st_size > 0
  pixels = np.asarray(Image.open(tmp_path / "fig.png").convert("RGB"))
  assert pixels.shape == (3 * 64 + 24, 5 * 64, 3)
  # Column 2 (ground truth) and 3 (clean prediction) show the VOC colours of the maps, cell by cell.
  x, y = np.asarray(batches[0]["image"][:3]), np.asarray(batches[0]["label"][:3])
  pred = np.asarray(model_fn(variables)(jnp.asarray(x))).argmax(-1)
  cell = (64 - 4) / 8
  for row in range(3):
    for col, maps in ((1, y), (2, pred)):
      for r, c in ((0, 0), (3, 5), (7, 7), (5, 2)):
        top = 24 + row * 64 + 2 + int((r + 0.5) * cell)
        left = col * 64 + 2 + int((c + 0.5) * cell)
        np.testing.assert_array_equal(pixels[top, left], colorize(maps[row])[r, c])


def test_seg_figure_without_output_directory(batches, variables):
  result = evaluation.run({"fig": dict(type="seg_figure")}, _ctx(batches), variables)["fig"]
  assert result == {"path": None}
