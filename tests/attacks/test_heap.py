"""Heap adversary: shared perturbations, s=1 is PGD, s=d is universal, device-count invariance."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from advjax import tasks
from advjax.attacks import heap, losses, universal
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError

KEY = jax.random.key(7)


def _shared_value(x, x_adv, s):
  """Per heap and pixel, (min, max) of x_adv - x over members that the box did not clip."""
  d = np.asarray(x_adv - x, np.float64).reshape((-1, s) + x.shape[1:])
  free = ((np.asarray(x_adv) > 0) & (np.asarray(x_adv) < 1)).reshape(d.shape)
  lo = np.where(free, d, np.inf).min(axis=1)
  hi = np.where(free, d, -np.inf).max(axis=1)
  return lo, hi


@pytest.mark.parametrize("s", [4, 32])
def test_heap_members_share_one_perturbation(s, logits_fn, batch):
  x, y = batch
  cfg = pgd_lib.pgd(16.0, step_size=4.0, num_steps=5, loss="clipped_cross_entropy")
  x_adv = heap.heap_attack(logits_fn, x, y, KEY, cfg, s)
  lo, hi = _shared_value(x, x_adv, s)
  seen = np.isfinite(lo)
  assert seen.mean() > 0.5
  np.testing.assert_allclose(lo[seen], hi[seen], atol=1e-6)
  assert np.abs(np.asarray(x_adv - x)).max() <= 16 / 255 + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # Heaps are attacked separately, and the attack works on each heap's mean loss.
  if s < x.shape[0]:
    assert not np.allclose(np.where(seen[0], lo[0], 0), np.where(seen[1], lo[1], 0))
  ce = lambda v: np.asarray(losses.cross_entropy(logits_fn(v), y)).mean()  # noqa: E731
  assert ce(x_adv) > 2 * ce(x)


S1_CONFIGS = [
    pgd_lib.pgd(8.0, num_steps=3),
    pgd_lib.pgd(200.0, step_size=60.0, num_steps=3, norm="l2", loss="clipped_cross_entropy"),
    pgd_lib.mi_fgsm(8.0, step_size=2.0, num_steps=3, restarts=2, init="mixed",
                    restart_select="misclassified"),
    pgd_lib.pgd(16.0, num_steps=3, targeted=True, step_schedule="annealed",
                step_rule="adam", label_smoothing=0.1),
]


@pytest.mark.parametrize("cfg", S1_CONFIGS,
                         ids=lambda c: f"{c.norm}-{c.step_rule}-{c.init}-{c.targeted}")
def test_sharedness_one_is_pgd_bitwise(cfg, logits_fn, batch):
  x, y = batch
  expected = pgd_lib.attack(logits_fn, x, y, KEY, cfg)
  np.testing.assert_array_equal(np.asarray(heap.heap_attack(logits_fn, x, y, KEY, cfg, 1)),
                                np.asarray(expected))


@pytest.mark.parametrize("loss", ["cross_entropy", "clipped_cross_entropy"])
def test_sharedness_d_is_the_batch_universal_perturbation(loss, logits_fn, batch):
  x, y = batch
  steps, eps, alpha = 6, 24.0, 4.0
  cfg = pgd_lib.bim(eps, step_size=alpha, num_steps=steps, loss=loss)
  x_adv = heap.heap_attack(logits_fn, x, y, KEY, cfg, x.shape[0])
  ucfg = universal.UniversalConfig(eps=eps, num_steps=steps, step_size=alpha, loss=loss)
  xi = universal.universal_perturbation(
      logits_fn, [{"image": x, "label": y, "mask": jnp.ones(32)}], KEY, ucfg, x.shape[1:])
  np.testing.assert_allclose(np.asarray(x_adv), np.asarray(jnp.clip(x + xi, 0, 1)), atol=1e-6)
  assert np.abs(np.asarray(xi)).max() > 0.5 * eps / 255


def test_results_agree_between_one_and_eight_devices(logits_fn, batch):
  x, y = batch
  cfg = pgd_lib.pgd(16.0, step_size=4.0, num_steps=4, loss="clipped_cross_entropy")
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    assert len(devices) in (1, 8)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("data",)), P("data"))
    xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
    # 32 examples over 8 devices: heaps of 4 never straddle two devices.
    out.append(np.asarray(heap.heap_attack(logits_fn, xs, ys, KEY, cfg, 4)))
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_threshold_stops_the_heap_once_every_member_is_past_kappa(logits_fn, batch):
  x, y = batch
  # Labels the model considers very unlikely: CE above kappa for every member.
  wrong = jnp.argmin(logits_fn(x), axis=-1)
  assert float(losses.cross_entropy(logits_fn(x), wrong).min()) > -np.log(0.2)
  cfg = pgd_lib.bim(16.0, step_size=4.0, num_steps=3, loss="clipped_cross_entropy")
  np.testing.assert_array_equal(np.asarray(heap.heap_attack(logits_fn, x, wrong, KEY, cfg, 8)),
                                np.asarray(x))
  moved = heap.heap_attack(logits_fn, x, wrong, KEY,
                           dataclasses.replace(cfg, loss="cross_entropy"), 8)
  assert np.abs(np.asarray(moved - x)).max() > 0


def test_targeted_heaps_share_a_target(logits_fn, batch):
  x, y = batch
  cfg = pgd_lib.pgd(64.0, step_size=16.0, num_steps=4, targeted=True)
  # heap_attack draws the targets with the first half of its key, as pgd.attack does.
  targets = heap.heap_labels(logits_fn, x, y, jax.random.split(KEY)[0], cfg, 8, tasks.Classification(10))
  per_heap = np.asarray(targets).reshape(4, 8)
  assert (per_heap == per_heap[:, :1]).all() and (per_heap[:, 0] != np.asarray(y)[::8]).all()
  x_adv = heap.heap_attack(logits_fn, x, y, KEY, cfg, 8)

  def p_target(v):
    return float(jnp.mean(jax.nn.softmax(logits_fn(v))[jnp.arange(32), targets]))

  assert p_target(x_adv) > p_target(x) + 0.1


def test_heap_size_must_divide_the_batch(logits_fn, batch):
  x, y = batch
  with pytest.raises(ConfigError, match="heap_size"):
    heap.heap_attack(logits_fn, x, y, KEY, pgd_lib.pgd(8.0, num_steps=1), 5)
  with pytest.raises(ConfigError, match="heap_size"):
    heap.heap_attack(logits_fn, x, y, KEY, pgd_lib.pgd(8.0, num_steps=1), 0)
