"""Fixtures: the tiny digits CNN and padded evaluation batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import make_logits_fn
from tests.attacks import tiny_models


@pytest.fixture(scope="session")
def model_and_variables():
  return tiny_models.trained()


@pytest.fixture(scope="session")
def logits_fn(model_and_variables):
  return make_logits_fn(*model_and_variables)


@pytest.fixture(scope="session")
def batches():
  """Three batches of 32 test digits; the last holds 20 real examples and 12 of padding."""
  _, _, x, y = tiny_models.digits()
  x, y = x[:84], y[:84]
  out = []
  for start in range(0, 96, 32):
    xb, yb = x[start:start + 32], y[start:start + 32]
    mask = np.ones(32, np.float32)
    mask[len(xb):] = 0
    pad = 32 - len(xb)
    out.append({"image": jnp.asarray(np.pad(xb, ((0, pad), (0, 0), (0, 0), (0, 0)))),
                "label": jnp.asarray(np.pad(yb, (0, pad))), "mask": jnp.asarray(mask)})
  return out
