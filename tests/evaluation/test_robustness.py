"""Jitted evaluators: masking, attacks, and the eps_adv binary search of sec. 5.2."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import evaluation
from advjax.attacks import make_logits_fn
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError
from tests.attacks import tiny_models

KEY = jax.random.key(0)


def test_clean_accuracy_respects_mask(logits_fn, batches, model_and_variables):
  _, _, x, y = tiny_models.digits()
  expected = float(np.mean(np.asarray(jnp.argmax(logits_fn(x[:84]), -1)) == y[:84]))
  result = evaluation.clean_accuracy(logits_fn, batches)
  assert result == pytest.approx({"accuracy": expected, "num_examples": 84.0})
  model, variables = model_and_variables
  builder = lambda v: make_logits_fn(model, v)
  assert evaluation.clean_accuracy(builder, batches, variables=variables)["accuracy"] == \
      pytest.approx(expected)


def test_accuracy_under_attack(logits_fn, batches):
  result = evaluation.accuracy_under_attack(logits_fn, batches, pgd_lib.pgd(32.0, step_size=4.0), KEY)
  assert set(result) == {"accuracy", "clean_accuracy", "misclassification_rate", "num_examples"}
  assert all(isinstance(v, float) for v in result.values())
  assert result["accuracy"] < result["clean_accuracy"] - 0.2
  assert result["misclassification_rate"] == pytest.approx(1 - result["accuracy"])


def test_eps_adv_search_is_consistent(logits_fn, batches):
  cfg = evaluation.eps_adv_config(num_steps=10)
  delta = 0.5
  result = evaluation.eps_adv_search(logits_fn, batches, KEY, cfg, delta=delta,
                                     num_search_steps=6)
  assert result["found"] == 1.0 and 0.0 < result["eps_adv"] <= 255.0
  assert result["lower_bound"] < result["eps_adv"]
  # 6 bisections of [0, 255] leave an interval of 255 / 64.
  assert result["eps_adv"] - result["lower_bound"] == pytest.approx(255 / 64)
  at = lambda eps: evaluation.accuracy_under_attack(
      logits_fn, batches, cfg, KEY, eps=eps)["misclassification_rate"]
  assert at(result["eps_adv"]) >= delta > at(result["lower_bound"])
  assert result["clean_misclassification_rate"] < delta


def test_eps_adv_search_does_not_recompile_per_eps(model_and_variables, batches):
  model, variables = model_and_variables
  traces = []

  def counting(x):
    traces.append(1)
    return model.apply(variables, x)

  cfg = evaluation.eps_adv_config(num_steps=2)
  evaluation.eps_adv_search(counting, batches[:1], KEY, cfg, num_search_steps=1)
  first = len(traces)
  evaluation.eps_adv_search(counting, batches[:1], KEY, cfg, num_search_steps=4)
  assert len(traces) == first


def test_eps_adv_search_validates():
  with pytest.raises(ConfigError, match="delta"):
    evaluation.eps_adv_search(lambda x: x, [], KEY, delta=1.5)
