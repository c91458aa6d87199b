"""Destruction rate and the four transformations against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.analysis import destruction, epochs
from advjax.attacks import deepfool
from advjax.errors import ConfigError
from tests.analysis import linear_models as lm


def test_destruction_rate_hand_case():
  clean = np.array([1, 1, 1, 0, 1], bool)
  adv = np.array([0, 0, 1, 0, 0], bool)
  trans = np.array([1, 0, 1, 1, 1], bool)
  # Effective: examples 0, 1, 4; the transform restores 0 and 4.
  rate, num = destruction.destruction_rate(clean, adv, trans)
  assert num == 3 and rate == pytest.approx(2 / 3)
  rates, _ = destruction.destruction_rate(clean, adv, np.stack([trans, ~trans], axis=1))
  np.testing.assert_allclose(rates, [2 / 3, 1 / 3])
  rate, num = destruction.destruction_rate(clean, np.ones(5, bool), trans)
  assert num == 0 and np.isnan(rate)


def _np_gaussian_kernel(sigma):
  r = max(1, int(np.ceil(3 * sigma)))
  k = np.arange(-r, r + 1)
  w = np.exp(-k ** 2 / (2 * sigma ** 2))
  return w / w.sum()


def _np_blur(x, sigma):
  w = _np_gaussian_kernel(sigma)
  r = len(w) // 2
  out = np.empty_like(x, dtype=np.float64)
  for n in range(x.shape[0]):
    for c in range(x.shape[-1]):
      img = np.pad(x[n, :, :, c].astype(np.float64), r, mode="reflect")
      rows = np.array([np.convolve(img[:, j], w, mode="valid") for j in range(img.shape[1])]).T
      out[n, :, :, c] = np.array([np.convolve(row, w, mode="valid") for row in rows])
  return np.clip(out, 0, 1)


def test_gaussian_kernel_and_blur_match_numpy():
  for sigma in (0.5, 0.8, 1.3):
    k = np.asarray(destruction.gaussian_kernel(sigma))
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, _np_gaussian_kernel(sigma), rtol=1e-5, atol=1e-7)
  # A wider radius pads the same taps with zeros (the traced-sigma grid path).
  wide = np.asarray(destruction.gaussian_kernel(0.5, radius=4))
  np.testing.assert_allclose(wide[2:7], _np_gaussian_kernel(0.5), rtol=1e-5)
  assert np.all(wide[:2] == 0) and np.all(wide[7:] == 0)
  x = np.random.default_rng(0).uniform(size=(2, 7, 6, 2)).astype(np.float32)
  got = np.asarray(destruction.gaussian_blur(jnp.asarray(x), 0.8))
  np.testing.assert_allclose(got, _np_blur(x, 0.8), rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError):
    destruction.gaussian_blur(jnp.asarray(x), 2.5)   # radius 8 > 6 pixels


def test_destruction_rates_match_numpy_reference():
  fn, w, b = lm.model(18)
  n = 12
  x = lm.images(60, n)
  y = np.argmax(lm.np_logits(w, b, x), -1)
  y[0] = (y[0] + 1) % lm.CLASSES            # one example wrong when clean
  # Near-minimal perturbations, so that the transformations undo some of them.
  x_adv = epochs.adversarial_examples(fn, x, y, jax.random.key(0),
                                      deepfool.DeepFoolConfig(overshoot=0.3))
  rng = jax.random.key(3)
  grids = {"brightness": (-40.0, 25.0), "contrast": (0.7, 1.3), "blur": (0.5, 1.0),
           "noise": (10.0, 60.0)}
  got = destruction.destruction_rates(fn, x, x_adv, y, rng, grids, batch_size=5)

  def correct(images):
    return np.argmax(lm.np_logits(w, b, images), -1) == y

  clean, adv = correct(x), correct(x_adv)
  effective = clean & ~adv
  assert 2 <= effective.sum() < n
  noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(rng, k), lm.SHAPE))
                    for k in range(n)])
  transforms = {
      "brightness": lambda s: np.clip(x_adv + s / 255, 0, 1),
      "contrast": lambda s: np.clip(x_adv * s, 0, 1),
      "blur": lambda s: _np_blur(x_adv, s),
      "noise": lambda s: np.clip(x_adv + s / 255 * noise, 0, 1),
  }
  for name, strengths in grids.items():
    ref = [np.sum(effective & correct(transforms[name](s))) / effective.sum() for s in strengths]
    np.testing.assert_allclose(got[name], ref, err_msg=name)
    assert np.any((0 < np.asarray(ref)) & (np.asarray(ref) < 1)), name
  assert int(got["num_effective"]) == effective.sum()
  mean_centered = destruction.destruction_rates(fn, x, x_adv, y, rng, {"contrast": (0.5,)},
                                                contrast_center="mean")
  m = x_adv.mean(axis=(1, 2, 3), keepdims=True)
  ref = np.sum(effective & correct(np.clip(m + 0.5 * (x_adv - m), 0, 1))) / effective.sum()
  assert mean_centered["contrast"][0] == pytest.approx(ref)
  # The noise of an example does not depend on the batching.
  whole = destruction.destruction_rates(fn, x, x_adv, y, rng, {"noise": grids["noise"]})
  np.testing.assert_allclose(whole["noise"], got["noise"])


def test_unknown_transform():
  fn = lm.model(18)[0]
  x = lm.images(61, 3)
  with pytest.raises(ConfigError):
    destruction.destruction_rates(fn, x, x, np.zeros(3, int), jax.random.key(0), {"jpeg": (50,)})


def test_destruction_study_composes_attacks_and_rates():
  fns = [lm.model(22, scale=1.0)[0], lm.model(23, scale=1.0)[0]]
  x = lm.images(62, 6)
  y = np.argmax(np.asarray(fns[0](jnp.asarray(x))), -1)
  rng = jax.random.key(5)
  grids = {"brightness": (-20.0, 20.0)}
  study = destruction.destruction_study(fns, x, y, rng, adversaries=("fgsm",), grids=grids)
  k_attack, k_noise = jax.random.split(rng)
  sets = epochs.per_epoch_adversarial(fns, x, y, jax.random.fold_in(k_attack, 0), "fgsm")
  assert study["fgsm"]["brightness"].shape == (2, 2)
  for t, fn in enumerate(fns):
    direct = destruction.destruction_rates(fn, x, sets[t], y, k_noise, grids)
    np.testing.assert_allclose(study["fgsm"]["brightness"][t], direct["brightness"])
    assert study["fgsm"]["num_effective"][t] == direct["num_effective"]
