"""The universality paper's evaluators on a three-epoch history of a tiny digits CNN, against NumPy.

The history is the tiny CNN of tests/attacks/tiny_models.py and two noisy
copies of it (three different models of similar accuracy); every evaluator
runs through `evaluation.run` as eval.py runs it, and its numbers are
recomputed here in NumPy from the models' logits (or, for the destruction
rates, from per-example correctness).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, evaluation, run_dir, tasks
from advjax.analysis import epochs as epochs_lib
from advjax.analysis import sharedness as sharedness_lib
from advjax.attacks import pgd
from advjax.config import eval_entry
from advjax.errors import CheckpointError
from advjax.experiment import Experiment
from configs import tiny
from tests.attacks import tiny_models

EPS, STEP, STEPS = 24.0, 8.0, 3


@pytest.fixture(scope="module")
def setup():
  model, variables = tiny_models.trained()
  history = [(0, variables)]
  for step, seed in ((4, 1), (8, 2)):
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [v + 0.15 * jnp.std(v) * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    history.append((step, jax.tree.unflatten(tree, noisy)))
  x_train, y_train, x_test, y_test = tiny_models.digits()
  model_fn = functools.partial(attacks.make_logits_fn, model)

  def train_stream(batch_size, name):
    offset = sum(map(ord, name)) % 100

    def batches():
      for k in range(10**6):
        idx = (offset + np.arange(k * batch_size, (k + 1) * batch_size)) % len(x_train)
        yield {"image": jnp.asarray(x_train[idx]), "label": jnp.asarray(y_train[idx]),
               "mask": jnp.ones(batch_size)}

    return batches

  def held_out():
    return [{"image": jnp.asarray(x_test[s:s + 64]), "label": jnp.asarray(y_test[s:s + 64]),
             "mask": jnp.ones(len(x_test[s:s + 64]))} for s in range(0, 192, 64)]

  def ctx(out_dir):
    return evaluation.EvalContext(
        task=tasks.Classification(10), model_fn=model_fn, held_out=held_out, train_stream=train_stream,
        image_shape=(8, 8, 1), rng=jax.random.key(3), out_dir=out_dir, model=model, history=lambda: history)

  fns = [model_fn(v) for _, v in history]
  return dict(ctx=ctx, fns=fns, x=x_test, y=y_test, model=model, history=history)


def _logits(setup, t, x):
  return np.asarray(setup["model"].apply(setup["history"][t][1], jnp.asarray(x)), np.float64)


def _bi_sets(setup, n):
  """The BI examples every epoch's model gets, made once (the attack itself is tested elsewhere)."""
  cfg = pgd.bim(eps=EPS, step_size=STEP, num_steps=STEPS)
  return epochs_lib.per_epoch_adversarial(setup["fns"], setup["x"][:n], setup["y"][:n], jax.random.key(0), cfg)


def _run(setup, tmp_path, **entries):
  results = evaluation.run(entries, setup["ctx"](str(tmp_path)), None)
  json.dumps(results)  # eval.json-ready
  return results


def test_stability_and_transfer_match_numpy(setup, tmp_path):
  n = 40
  common = dict(max_examples=n, batch_size=16, attack=dict(eps=EPS, step_size=STEP, num_steps=STEPS))
  out = _run(setup, tmp_path, stab=eval_entry("stability", **common), tr=eval_entry("transfer", **common))
  sets, y = _bi_sets(setup, n), setup["y"][:n]
  # P[n, t1, t2] = softmax(logits of model t2 on the examples of epoch t1)[y].
  p = np.zeros((n, 3, 3))
  acc = np.zeros((3, 3))
  for t1 in range(3):
    for t2 in range(3):
      logits = _logits(setup, t2, sets[t1])
      probs = np.exp(logits - logits.max(1, keepdims=True))
      probs /= probs.sum(1, keepdims=True)
      p[:, t1, t2] = probs[np.arange(n), y]
      acc[t1, t2] = np.mean(logits.argmax(1) == y)
  max_min, min_max = p.max(2).min(1), p.min(1).max(1)
  assert np.all(max_min >= min_max - 1e-6)
  s = out["stab"]
  assert s["epochs"] == [0, 1, 2] and s["steps"] == [0, 4, 8] and s["num_examples"] == n
  assert s["max_min_mean"] == pytest.approx(max_min.mean(), abs=1e-5)
  assert s["min_max_mean"] == pytest.approx(min_max.mean(), abs=1e-5)
  assert s["fraction_robust"] == pytest.approx(np.mean(min_max >= 0.5))
  assert s["fraction_stable"] == pytest.approx(np.mean(max_min < 0.5))
  assert s["fraction_robust"] + s["fraction_stable"] + s["fraction_oscillating"] == pytest.approx(1.0)
  np.testing.assert_allclose(s["white_box_accuracy"], np.diagonal(acc))
  np.testing.assert_allclose(out["tr"]["accuracy"], acc)
  assert out["tr"]["black_box_accuracy_mean"] == pytest.approx(acc[~np.eye(3, dtype=bool)].mean())
  assert os.path.getsize(s["path"]) > 0 and os.path.getsize(out["tr"]["path"]) > 0


def test_sharedness_matches_numpy(setup, tmp_path):
  p_num, n_other = 12, 60
  out = _run(setup, tmp_path, sh=eval_entry("sharedness", max_examples=p_num, num_other=n_other, num_train=32,
                                            batch_size=32, chunk_size=4,
                                            attack=dict(eps=EPS, step_size=STEP, num_steps=STEPS)))["sh"]
  x, y = setup["x"][:p_num + n_other], setup["y"][:p_num + n_other]
  xs, ys, xo, yo = x[:p_num], y[:p_num], x[p_num:], y[p_num:]
  sets = _bi_sets(setup, p_num)
  means = []
  for t in range(3):
    clean_ok = _logits(setup, t, xo).argmax(1) == yo
    rates = [np.mean(clean_ok & (_logits(setup, t, np.clip(xo + (sets[t, i] - xs[i]), 0, 1)).argmax(1) != yo))
             for i in range(p_num)]
    means.append(np.mean(rates))
  np.testing.assert_allclose(out["sharedness_mean"], means, atol=1e-6)
  assert out["num_other"] == n_other and len(out["sharedness_max"]) == 3
  # r is the pure function's on the same perturbations and training inputs.
  train = next(iter(setup["ctx"](None).train_stream(32, "sh/train")()))
  corr = sharedness_lib.sharedness_stability_correlation(
      setup["fns"][0], setup["fns"][1:], xs, sets[0] - xs, ys, np.asarray(train["image"]), np.asarray(train["label"]))
  if corr.num_used >= 3:
    assert out["cost_change_r"] == pytest.approx(corr.r, abs=1e-5)
  assert out["cost_change_pairs"] == corr.num_used


def test_universal_epochs_accuracy_matches_numpy(setup, tmp_path):
  out = _run(setup, tmp_path, uni=eval_entry("universal_epochs", max_examples=64, universal_batch=16, universal=dict(
      eps=40.0, step_size=10.0, grad_batches=2, num_steps=3)))["uni"]
  deltas = np.load(os.path.join(str(tmp_path), "uni.npy"))
  assert deltas.shape == (3, 8, 8, 1) and np.abs(deltas).max() <= 40.0 / 255 + 1e-6
  x, y = setup["x"][:64], setup["y"][:64]
  matrix = np.array([[np.mean(_logits(setup, m, np.clip(x + deltas[t], 0, 1)).argmax(1) == y) for m in range(3)]
                     for t in range(3)])
  np.testing.assert_allclose(out["accuracy_matrix"], matrix)
  np.testing.assert_allclose(out["accuracy"], np.diagonal(matrix))
  np.testing.assert_allclose(out["clean_accuracy"], [np.mean(_logits(setup, m, x).argmax(1) == y) for m in range(3)])
  assert os.path.getsize(out["path"]) > 0


def test_destruction_matches_numpy(setup, tmp_path):
  n = 48
  grids = {"brightness": (-40.0, 40.0), "blur": (0.5, 1.0)}
  out = _run(setup, tmp_path, d=eval_entry("destruction", epochs=(1, 2), max_examples=n, batch_size=16,
                                           attack=dict(eps=EPS, step_size=STEP, num_steps=STEPS),
                                           adversaries=("bi", "fgsm"), grids=grids))["d"]
  x, y = setup["x"][:n], setup["y"][:n]
  cfgs = {"bi": pgd.bim(eps=EPS, step_size=STEP, num_steps=STEPS), "fgsm": pgd.fgsm(eps=EPS)}
  for name, cfg in cfgs.items():
    for i, t in enumerate((1, 2)):
      x_adv = epochs_lib.adversarial_examples(setup["fns"][t], x, y, jax.random.key(0), cfg)
      effective = (_logits(setup, t, x).argmax(1) == y) & (_logits(setup, t, x_adv).argmax(1) != y)
      assert out[name]["num_effective"][i] == effective.sum()
      for k, b in enumerate(grids["brightness"]):
        restored = _logits(setup, t, np.clip(x_adv + b / 255, 0, 1)).argmax(1) == y
        expected = (effective & restored).sum() / effective.sum() if effective.any() else None
        assert out[name]["brightness"][i][k] == pytest.approx(expected, abs=1e-9)
      assert out[name]["blur_mean"][i] == pytest.approx(np.mean(out[name]["blur"][i]))
  assert os.path.getsize(out["path"]) > 0


def test_detection_matrix_and_universal_probability(setup, tmp_path):
  out = _run(setup, tmp_path, det=eval_entry(
      "detection", epochs=(0, 2), max_examples=32, num_train=32, batch_size=32,
      attack=dict(eps=EPS, step_size=STEP, num_steps=STEPS), detector_features=(8, 8), detector_pools=(True, False),
      train_passes=2, train_batch=16, universal_batch=16,
      universal=dict(eps=40.0, step_size=10.0, grad_batches=2, num_steps=2)))["det"]
  matrix = np.asarray(out["accuracy_matrix"])
  assert out["epochs"] == [0, 2] and out["steps"] == [0, 8]
  assert matrix.shape == (2, 2) and np.all((0 <= matrix) & (matrix <= 1))
  # Each entry counts 32 clean and 32 adversarial test images.
  np.testing.assert_allclose(matrix * 64, np.round(matrix * 64), atol=1e-9)
  np.testing.assert_allclose(out["accuracy"], np.diagonal(matrix))
  assert out["accuracy_min"] == pytest.approx(matrix.min())
  assert all(0 <= p <= 1 for p in out["universal_adversarial_probability"] + out["train_accuracy"])
  assert os.path.getsize(out["path"]) > 0 and os.path.getsize(os.path.join(str(tmp_path), "det_universal.png")) > 0


def test_history_starts_with_the_init_checkpoint(tmp_path):
  source, run = str(tmp_path / "source"), str(tmp_path / "run")
  config = tiny.get_config()
  experiment = Experiment(config, jax.devices()[:1])
  state = experiment.init_state()
  start = state.replace(params=jax.tree.map(lambda v: v + 1.0, state.params))
  for directory, saved, step in ((source, start, 12), (run, state, 4)):
    checkpointer = run_dir.Checkpointer(directory, keep=10)
    checkpointer.save(step, saved, wait=True)
    checkpointer.close()
  # The experiment reads its config when asked, so one experiment serves every case.
  config.init_checkpoint = source
  history = experiment.history(run)
  assert [s for s, _ in history] == [0, 4]
  jax.tree.map(np.testing.assert_array_equal, history[0][1]["params"], start.params)
  jax.tree.map(np.testing.assert_array_equal, history[1][1]["params"], state.params)
  config.init_checkpoint = str(tmp_path / "missing")
  with pytest.raises(CheckpointError, match="missing"):
    experiment.history(run)
