"""Projections and random starts stay in the eps ball and the image box."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import threat


@pytest.mark.parametrize("norm", threat.NORMS)
def test_random_init_and_projection_stay_in_ball(norm):
  eps = threat.to_unit(8.0)
  delta = threat.random_init(jax.random.key(0), (64, 4, 4, 3), norm, eps)
  big = threat.project(delta * 10.0, norm, eps)
  for d in (delta, big):
    n = threat.per_perturbation_norm(d, np.inf if norm == "linf" else 2)
    assert np.all(np.asarray(n) <= eps * (1 + 1e-5))
  if norm == "l2":
    # Uniform in volume in 48 dimensions: radii concentrate near eps.
    r = np.asarray(threat.per_perturbation_norm(delta, 2)).ravel() / eps
    assert 0.9 < np.median(r) < 1.0
  else:
    assert np.abs(np.asarray(delta)).max() > 0.9 * eps


def test_clip_to_box_and_apply_broadcast():
  x = jax.random.uniform(jax.random.key(1), (2, 3, 4, 4, 1))
  shared = jnp.full((2, 1, 4, 4, 1), 0.5)
  out = threat.apply(x, shared)
  assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
  x2 = x[:, 0]
  d = threat.clip_to_box(x2, jnp.full_like(x2, 0.5))
  assert float((x2 + d).max()) <= 1.0 and float(d.min()) >= 0.0
