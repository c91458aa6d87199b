"""Jitted evaluation: masking, attacks, the bisection helper and the eps_adv search of sec. 5.2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import evaluation
from advjax.attacks import make_logits_fn
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError
from advjax.evaluation import search
from tests.attacks import tiny_models

KEY = jax.random.key(0)


def test_clean_metrics_respect_mask(logits_fn, batches, model_and_variables):
  _, _, x, y = tiny_models.digits()
  expected = float(np.mean(np.asarray(jnp.argmax(logits_fn(x[:84]), -1)) == y[:84]))
  result = evaluation.clean_metrics(logits_fn, batches)
  assert result == {"accuracy": pytest.approx(expected), "num_examples": 84}
  model, variables = model_and_variables
  builder = lambda v: make_logits_fn(model, v)
  assert evaluation.clean_metrics(builder, batches, variables=variables)["accuracy"] == pytest.approx(expected)


def test_attacked_metrics(logits_fn, batches):
  cfg = pgd_lib.pgd(32.0, step_size=4.0)
  result = evaluation.attacked_metrics(logits_fn, batches, cfg, KEY)
  assert result["clean"] == evaluation.clean_metrics(logits_fn, batches)
  # The same attack, batch by batch, scored by hand (batch i attacked with fold_in(KEY, i)).
  correct = total = 0
  for i, b in enumerate(batches):
    x_adv = pgd_lib.attack(logits_fn, b["image"], b["label"], jax.random.fold_in(KEY, i), cfg)
    hits = np.asarray(jnp.argmax(logits_fn(x_adv), -1) == b["label"])
    correct += int(np.sum(hits * np.asarray(b["mask"])))
    total += int(np.sum(np.asarray(b["mask"])))
  assert result["adversarial"] == {"accuracy": pytest.approx(correct / total), "num_examples": total}
  assert result["adversarial"]["accuracy"] < result["clean"]["accuracy"] - 0.2


def test_bisection_finds_the_threshold_of_a_monotone_rate():
  # rate(eps) = eps / 200: the smallest eps reaching 0.5 is 100.
  probes = []

  def probe(eps):
    probes.append(eps)
    return eps / 200, f"delta@{eps}"

  result = search.bisect(probe, target_rate=0.5, clean_rate=0.0, num_steps=8)
  lo, hi, found = 0.0, 255.0, None
  for _ in range(8):  # The same search written out.
    mid = (lo + hi) / 2
    if mid / 200 >= 0.5:
      hi, found = mid, mid
    else:
      lo = mid
  assert probes[0] == 127.5 and len(probes) == 8
  assert (result.eps, result.lower_bound) == (found, lo) and result.found
  assert result.eps >= 100 > result.lower_bound and result.artifact == f"delta@{found}"
  never = search.bisect(lambda e: (0.1, None), target_rate=0.5, clean_rate=0.0, num_steps=3)
  assert not never.found and never.eps == 255.0
  already = search.bisect(probe, target_rate=0.5, clean_rate=0.7, num_steps=3, clean_artifact="zero")
  assert already.eps == 0.0 and already.found and already.artifact == "zero"
  with pytest.raises(ConfigError, match="target rate"):
    search.bisect(probe, target_rate=1.5, clean_rate=0.0, num_steps=3)


def test_eps_adv_search_is_consistent(logits_fn, batches):
  cfg = evaluation.eps_adv_config(num_steps=10)
  result = evaluation.eps_adv_search(logits_fn, batches, KEY, cfg, target_rate=0.5, num_steps=6)
  assert result.found and result.lower_bound < result.eps
  # 6 bisections of [0, 255] leave an interval of 255 / 64.
  assert result.eps - result.lower_bound == pytest.approx(255 / 64)
  at = lambda eps: 1 - evaluation.attacked_metrics(logits_fn, batches, cfg, KEY, eps=eps)["adversarial"]["accuracy"]
  assert at(result.eps) >= 0.5 > at(result.lower_bound)
  assert result.rate == pytest.approx(at(result.eps))
  assert result.clean_rate == pytest.approx(1 - evaluation.clean_metrics(logits_fn, batches)["accuracy"])


def test_eps_adv_search_does_not_recompile_per_eps(model_and_variables, batches):
  model, variables = model_and_variables
  traces = []

  def counting(x):
    traces.append(1)
    return model.apply(variables, x)

  cfg = evaluation.eps_adv_config(num_steps=2)
  evaluation.eps_adv_search(counting, batches[:1], KEY, cfg, num_steps=1)
  first = len(traces)
  evaluation.eps_adv_search(counting, batches[:1], KEY, cfg, num_steps=4)
  assert len(traces) == first


def test_per_example_search_gives_each_example_its_own_radius(logits_fn, batches):
  cfg = evaluation.eps_adv_config(num_steps=10)
  minima, found = evaluation.robustness.per_example_eps(logits_fn, batches, KEY, cfg, num_steps=6)
  assert minima.shape == found.shape == (84,) and found.mean() > 0.9
  # Every minimum is a probe of the 6-step bisection of [0, 255] (or 0 for clean mistakes).
  grid = np.arange(64) * 255 / 64
  assert np.all(np.isin(minima[found], grid))
  # The attack at an example's own minimum fools it (the same per-example computation, scalar eps).
  i, batch = 0, batches[0]
  for j in np.flatnonzero(np.asarray(batch["mask"]) > 0)[:6]:
    x_adv = pgd_lib.attack(logits_fn, batch["image"], batch["label"], jax.random.fold_in(KEY, i), cfg,
                           eps=float(minima[j]))
    assert int(jnp.argmax(logits_fn(x_adv[j:j + 1]), -1)[0]) != int(batch["label"][j])
  # eps_adv(delta) from the minima: the delta-quantile; the global search's rate there reaches delta.
  eps, ok = evaluation.robustness.eps_at_rate(minima, found, 0.5)
  assert ok and eps == np.sort(minima[found])[41]
  rate = 1 - evaluation.attacked_metrics(logits_fn, batches, cfg, KEY, eps=eps)["adversarial"]["accuracy"]
  assert rate >= 0.5 - 2 / 84


def test_pgd_evaluator_limits_the_examples(logits_fn, batches):
  from advjax.evaluation.base import first_examples
  limited = list(first_examples(batches, 40))
  assert len(limited) == 2 and int(sum(np.sum(np.asarray(b["mask"])) for b in limited)) == 40
  full = evaluation.attacked_metrics(logits_fn, batches[:2], pgd_lib.pgd(8.0, num_steps=2), KEY)
  assert full["clean"]["num_examples"] == 64
  part = evaluation.attacked_metrics(logits_fn, limited, pgd_lib.pgd(8.0, num_steps=2), KEY)
  _, _, x, y = tiny_models.digits()
  assert part["clean"] == {"accuracy": pytest.approx(float(np.mean(np.asarray(
      jnp.argmax(logits_fn(x[:40]), -1)) == y[:40]))), "num_examples": 40}
