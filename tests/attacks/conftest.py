"""Fixtures: a tiny CNN trained on sklearn digits and a small correctly classified batch."""

import jax.numpy as jnp
import pytest

from advjax.attacks import make_logits_fn
from tests.attacks import tiny_models


@pytest.fixture(scope="session")
def model_and_variables():
  return tiny_models.trained()


@pytest.fixture(scope="session")
def logits_fn(model_and_variables):
  model, variables = model_and_variables
  return make_logits_fn(model, variables)


@pytest.fixture(scope="session")
def batch(logits_fn):
  """32 test digits the model classifies correctly: (x [32, 8, 8, 1], y [32])."""
  _, _, x, y = tiny_models.digits()
  ok = jnp.argmax(logits_fn(jnp.asarray(x)), -1) == y
  x, y = jnp.asarray(x)[ok][:32], jnp.asarray(y)[ok][:32]
  assert x.shape[0] == 32
  return x, y
