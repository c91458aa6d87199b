"""Sharedness matrix and ratio, cost changes and the log-log correlation, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from advjax.analysis import sharedness
from advjax.errors import ConfigError, DataError
from tests.analysis import linear_models as lm


def _setup(n, p, seed=0):
  fn, w, b = lm.model(11)
  x = lm.images(40 + seed, n)
  y = np.argmax(lm.np_logits(w, b, x), -1)
  y[::5] = (y[::5] + 1) % lm.CLASSES          # some inputs misclassified clean
  xi = np.random.default_rng(seed).choice([-0.3, 0.3], size=(p,) + lm.SHAPE).astype(np.float32)
  return fn, w, b, x, y, xi


def _np_effective(w, b, xi, x, y):
  clean = np.argmax(lm.np_logits(w, b, x), -1) == y
  out = np.zeros((len(xi), len(x)), bool)
  for i, d in enumerate(xi):
    out[i] = clean & (np.argmax(lm.np_logits(w, b, np.clip(x + d, 0, 1)), -1) != y)
  return out


@pytest.mark.parametrize("chunk_size,input_chunk_size", [(3, None), (2, 4), (8, 16)])
def test_effective_matrix_matches_numpy(chunk_size, input_chunk_size):
  fn, w, b, x, y, xi = _setup(n=10, p=5)
  ref = _np_effective(w, b, xi, x, y)
  assert ref.any() and not ref.all()
  got = sharedness.effective_matrix(fn, jnp.asarray(xi), jnp.asarray(x), jnp.asarray(y),
                                    chunk_size=chunk_size, input_chunk_size=input_chunk_size)
  np.testing.assert_array_equal(np.asarray(got), ref)


def test_sharedness_excludes_own_input():
  fn, w, b, x, y, xi = _setup(n=10, p=4, seed=1)
  ref = _np_effective(w, b, xi, x, y)
  self_index = np.array([2, -1, 7, 0])
  got = np.asarray(sharedness.sharedness(fn, xi, x, y, self_index, chunk_size=2))
  expect = []
  for i, s in enumerate(self_index):
    keep = np.arange(10) != s
    expect.append(ref[i][keep].mean())
  np.testing.assert_allclose(got, expect, rtol=1e-6)
  # A matrix where the own column is the only hit: excluded, so sharedness 0.
  e = np.zeros((2, 4), bool)
  e[0, 1] = True
  e[1, 1] = True
  np.testing.assert_allclose(np.asarray(sharedness.sharedness_from_matrix(e, np.array([1, 3]))),
                             [0.0, 1 / 3])


def test_sharedness_per_epoch_and_summary():
  fn1, w1, b1, x, y, xi = _setup(n=10, p=3, seed=2)
  fn2, w2, b2 = lm.model(12)
  sets = np.stack([xi, -xi])
  frac = sharedness.sharedness_per_epoch([fn1, fn2], sets, x, y, chunk_size=2)
  ref = np.stack([_np_effective(w1, b1, xi, x, y).mean(1),
                  _np_effective(w2, b2, -xi, x, y).mean(1)])
  np.testing.assert_allclose(frac, ref, rtol=1e-6)
  s = sharedness.summarize_sharedness(np.array([[0.01, 0.03, 0.05], [0.0, 0.02, 0.001]]))
  np.testing.assert_allclose(s.mean, [0.03, 0.007])
  np.testing.assert_allclose(s.min, [0.01, 0.0])
  np.testing.assert_allclose(s.max, [0.05, 0.02])
  np.testing.assert_allclose(s.shared_fraction, [2 / 3, 1 / 3])


def test_effective_matrix_sharded_over_8_devices_equals_single_device():
  assert jax.device_count() == 8
  fn, w, b, x, y, xi = _setup(n=16, p=6, seed=3)
  mesh = Mesh(np.array(jax.devices()), ("batch",))
  data = NamedSharding(mesh, PartitionSpec("batch"))
  replicated = NamedSharding(mesh, PartitionSpec())
  xs, ys = jax.device_put(jnp.asarray(x), data), jax.device_put(jnp.asarray(y), data)
  assert len(xs.sharding.device_set) == 8
  xis = jax.device_put(jnp.asarray(xi), replicated)
  sharded = sharedness.effective_matrix(fn, xis, xs, ys, chunk_size=4)
  single = sharedness.effective_matrix(fn, jnp.asarray(xi), jnp.asarray(x), jnp.asarray(y),
                                       chunk_size=4)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
  np.testing.assert_array_equal(np.asarray(sharded), _np_effective(w, b, xi, x, y))


def test_cost_changes_match_numpy():
  fn, w, b, x, y, xi = _setup(n=9, p=4, seed=4)
  got = np.asarray(sharedness.current_cost_change(fn, jnp.asarray(xi), jnp.asarray(x),
                                                  jnp.asarray(y), chunk_size=3,
                                                  input_chunk_size=4))
  clean = lm.np_cross_entropy(lm.np_logits(w, b, x), y)
  ref = [np.mean(lm.np_cross_entropy(lm.np_logits(w, b, np.clip(x + d, 0, 1)), y) - clean)
         for d in xi]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  # Future: each perturbation on its own input, averaged over two later models.
  models = [lm.model(13), lm.model(14)]
  own_x, own_y = x[:4], y[:4]
  fut = sharedness.future_cost_change([m[0] for m in models], own_x, xi, own_y, batch_size=3)
  ref = np.mean([lm.np_cross_entropy(lm.np_logits(mw, mb, np.clip(own_x + xi, 0, 1)), own_y)
                 - lm.np_cross_entropy(lm.np_logits(mw, mb, own_x), own_y)
                 for _, mw, mb in models], axis=0)
  np.testing.assert_allclose(fut, ref, rtol=1e-4, atol=1e-4)


def test_log_log_pearson():
  a = np.array([0.5, 2.0, 3.0, -1.0, 8.0, 0.1])
  b = np.array([4.0, 1.0, 0.7, 2.0, 0.2, 0.0])
  r, n = sharedness.log_log_pearson(a, b)
  keep = [0, 1, 2, 4]                          # a <= 0 at 3, b <= 0 at 5
  assert n == 4
  assert r == pytest.approx(np.corrcoef(np.log(a[keep]), np.log(b[keep]))[0, 1])
  assert r < 0
  counts_a, counts_b = np.array([0, 3, 10, 1, 7]), np.array([5, 2, 0, 4, 1])
  r1, n1 = sharedness.log_log_pearson(counts_a, counts_b, offset=1.0)
  assert n1 == 5
  assert r1 == pytest.approx(np.corrcoef(np.log1p(counts_a), np.log1p(counts_b))[0, 1])
  with pytest.raises(DataError):
    sharedness.log_log_pearson([1.0, -1.0, 2.0], [1.0, 1.0, -2.0])


def test_bad_chunk_size():
  fn, _, _, x, y, xi = _setup(n=4, p=2)
  with pytest.raises(ConfigError):
    sharedness.effective_matrix(fn, jnp.asarray(xi), jnp.asarray(x), jnp.asarray(y),
                                chunk_size=0)


def test_sharedness_stability_correlation_matches_numpy():
  fn, w, b, x_train, y_train, _ = _setup(n=12, p=1, seed=5)
  x = lm.images(80, 10)
  y = np.argmax(lm.np_logits(w, b, x), -1)
  # FGSM-like perturbations of growing size: grad_x CE = W (softmax - onehot) for a linear model.
  grad = (lm.np_softmax(lm.np_logits(w, b, x)) - np.eye(lm.CLASSES)[y]) @ w.T
  sizes = np.linspace(0.05, 0.3, 10)[:, None]
  xi = (sizes * np.sign(grad)).reshape((10,) + lm.SHAPE).astype(np.float32)
  # Later models drift a little from the current one.
  future = []
  for seed in (24, 25):
    fw = (w + 0.5 * np.random.default_rng(seed).standard_normal(w.shape)).astype(np.float32)
    future.append((lambda v, fw=jnp.asarray(fw): v.reshape(v.shape[0], -1) @ fw + b, fw, b))
  res = sharedness.sharedness_stability_correlation(fn, [m[0] for m in future], x, xi, y,
                                                    x_train, y_train, chunk_size=4)
  clean = lm.np_cross_entropy(lm.np_logits(w, b, x_train), y_train)
  current = np.array([
      np.mean(lm.np_cross_entropy(lm.np_logits(w, b, np.clip(x_train + d, 0, 1)), y_train)
              - clean) for d in xi])
  fut = np.mean([lm.np_cross_entropy(lm.np_logits(mw, mb, np.clip(x + xi, 0, 1)), y)
                 - lm.np_cross_entropy(lm.np_logits(mw, mb, x), y) for _, mw, mb in future], 0)
  np.testing.assert_allclose(res.current, current, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(res.future, fut, rtol=1e-4, atol=1e-4)
  keep = (current > 0) & (fut > 0)
  assert res.num_used == keep.sum() >= 3
  assert res.r == pytest.approx(np.corrcoef(np.log(current[keep]), np.log(fut[keep]))[0, 1],
                                abs=1e-3)
