"""Input diversity, ensembles of logits and batched DeepFool."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import deepfool as deepfool_lib
from advjax.attacks import diversity, ensemble_logits_fn
from advjax.attacks import pgd as pgd_lib


def test_random_resize_pad_shapes_and_zero_border():
  x = jnp.ones((2, 40, 40, 3))
  canvas_sizes = set()
  for seed in range(4):
    out = jax.jit(diversity.random_resize_pad)(jax.random.key(seed), x)
    assert out.shape == x.shape
    # Zero padding survives the resize back as a dark border somewhere.
    assert float(out.min()) < 0.5 and float(out.max()) == pytest.approx(1.0)
    canvas_sizes.add(float(out.mean()))
  assert len(canvas_sizes) > 1


def test_input_diversity_probability_and_gradient():
  x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1))
  assert diversity.input_diversity(jax.random.key(0), x, 0.0) is x
  transform = jax.jit(lambda k: diversity.input_diversity(k, x, 0.5))
  changed = [not np.array_equal(transform(jax.random.key(s)), x) for s in range(40)]
  assert 8 < sum(changed) < 32
  g = jax.grad(lambda v: diversity.input_diversity(jax.random.key(1), v, 1.0).sum())(x)
  assert float(jnp.abs(g).sum()) > 0


def test_ensemble_fuses_weighted_logits(logits_fn, batch):
  x, y = batch
  double = lambda v: 2.0 * logits_fn(v)
  fused = ensemble_logits_fn([logits_fn, double], [0.25, 0.5])
  np.testing.assert_allclose(fused(x), 1.25 * logits_fn(x), rtol=1e-5, atol=1e-5)
  uniform = ensemble_logits_fn([logits_fn, logits_fn])
  np.testing.assert_allclose(uniform(x), logits_fn(x), rtol=1e-5, atol=1e-5)
  x_adv = pgd_lib.attack(fused, x, y, jax.random.key(0), pgd_lib.fgsm(8.0))
  assert float(jnp.abs(x_adv - x).max()) <= 8 / 255 + 1e-6


def test_deepfool_stops_when_misclassified(logits_fn, batch):
  x, y = batch
  few = deepfool_lib.deepfool(logits_fn, x, y, None, deepfool_lib.DeepFoolConfig(num_steps=2))
  many = deepfool_lib.deepfool(logits_fn, x, y, None, deepfool_lib.DeepFoolConfig(num_steps=50))
  fooled_early = np.asarray(jnp.argmax(logits_fn(few), -1) != y)
  assert fooled_early.any()
  # Examples fooled after two iterations are frozen: fifty iterations leave them unchanged.
  np.testing.assert_array_equal(np.asarray(few)[fooled_early], np.asarray(many)[fooled_early])
  linf = deepfool_lib.deepfool(logits_fn, x, y, None, deepfool_lib.DeepFoolConfig(norm="linf"))
  assert np.mean(np.asarray(jnp.argmax(logits_fn(linf), -1) != y)) >= 0.9
  assert float(linf.min()) >= 0 and float(linf.max()) <= 1
