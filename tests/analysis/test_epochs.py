"""Per-epoch adversarial sets and the batching helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.analysis import epochs
from advjax.attacks import deepfool, pgd
from advjax.errors import ConfigError, DataError
from tests.analysis import linear_models as lm


def test_paper_presets():
  bi = epochs.adversary_config("bi")
  assert (bi.eps, bi.step_size, bi.num_steps, bi.init) == (4.0, 1.0, 10, "zero")
  fgsm = epochs.adversary_config("fgsm", eps=8.0)
  assert (fgsm.eps, fgsm.step_size, fgsm.num_steps) == (8.0, 8.0, 1)
  assert isinstance(epochs.adversary_config("deepfool"), deepfool.DeepFoolConfig)
  with pytest.raises(ConfigError):
    epochs.adversary_config("cw")


def test_per_epoch_sets_equal_direct_attacks_across_ragged_batches():
  fns = [lm.model(7)[0], lm.model(8)[0]]
  x = jnp.asarray(lm.images(30, 5))
  y = jnp.array([0, 1, 2, 1, 0])
  rng = jax.random.key(0)
  sets = epochs.per_epoch_adversarial(fns, x, y, rng, "bi", batch_size=2)
  assert sets.shape == (2, 5) + lm.SHAPE
  for t, fn in enumerate(fns):
    direct = pgd.attack(fn, x, y, rng, epochs.adversary_config("bi"))
    np.testing.assert_allclose(sets[t], np.asarray(direct), atol=1e-6)
  # BI with eps = 4 / 255 moves every pixel by at most eps.
  assert np.max(np.abs(sets - np.asarray(x)[None])) <= 4 / 255 + 1e-6


def test_deepfool_dispatch():
  fn = lm.model(9)[0]
  x = jnp.asarray(lm.images(31, 4))
  y = jnp.argmax(fn(x), -1)
  out = epochs.adversarial_examples(fn, x, y, jax.random.key(1), "deepfool", batch_size=3)
  direct = deepfool.deepfool(fn, x, y, jax.random.key(1), deepfool.DeepFoolConfig())
  np.testing.assert_allclose(out, np.asarray(direct), atol=1e-6)
  assert np.mean(np.argmax(fn(jnp.asarray(out)), -1) != y) >= 0.75


def test_map_batched_pads_and_trims():
  calls = []

  def fn(a, b):
    calls.append(a.shape[0])
    return a * 2, b + 1

  a, b = epochs.map_batched(fn, [np.arange(7), np.arange(7) * 10], batch_size=3)
  np.testing.assert_array_equal(a, np.arange(7) * 2)
  np.testing.assert_array_equal(b, np.arange(7) * 10 + 1)
  assert calls == [3, 3, 3]
  with pytest.raises(DataError):
    epochs.map_batched(fn, [np.arange(7), np.arange(6)], batch_size=3)
