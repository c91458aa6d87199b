"""DAG (Xie thesis, Alg. 1) against a per-image PyTorch implementation on identical weights, and its parts.

The reference below is Algorithm 1 written out the obvious way: a Python loop
over the images and over the iterations, torch autograd for r_m, and a
`break` when the active set is empty or r_m is zero. The tiny segmentation
net exists in flax and in torch with the same weights; both sides get the
same adversarial labels (derangements drawn here with NumPy).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from advjax.attacks import dag as dag_lib
from advjax.errors import ConfigError

K = 4
KEY = jax.random.key(3)
CFG = dag_lib.DAGConfig(gamma=4.0, num_steps=40, background_class=0)
# Measured max |x_adv(JAX) - x_adv(torch)| on the batch below: 3.0e-7 on the [0, 1] scale (float32),
# with equal iteration counts 22, 37, 0, 40, 36, 40 (M0 = 40 hit twice).
TORCH_ATOL = 1e-5


class TinySeg(nn.Module):
  """conv3x3(6) - relu - conv3x3(6) - relu - conv1x1(K): per-pixel logits [B, H, W, K]."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), padding="SAME", name="c1")(x))
    x = nn.relu(nn.Conv(6, (3, 3), padding="SAME", name="c2")(x))
    return nn.Conv(K, (1, 1), name="c3")(x)


def _torch_net(params):
  """The same net in torch (NCHW), weights copied from the flax params."""
  layers = []
  for name, k in (("c1", 3), ("c2", 3), ("c3", 1)):
    kernel = np.asarray(params[name]["kernel"])  # [kh, kw, in, out]
    conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], k, padding=k // 2)
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
      conv.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"]).copy()))
    layers += [conv, torch.nn.ReLU()]
  return torch.nn.Sequential(*layers[:-1])


def torch_dag(net, x, y, targets, gamma_255, max_iter, background):
  """Algorithm 1, image by image: (x_adv [B, H, W, C], iterations [B])."""
  gamma = gamma_255 / 255.0
  out, iters = [], []
  for b in range(x.shape[0]):
    x_m = torch.from_numpy(x[b:b + 1].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(y[b]).long()
    adv = torch.from_numpy(targets[b]).long()
    attackable = (labels >= 0) & (labels != background)
    m = 0
    while m < max_iter:
      x_m = x_m.detach().requires_grad_(True)
      logits = net(x_m)[0]  # [K, H, W]
      active = (logits.argmax(0) == labels) & attackable
      if not bool(active.any()):
        break
      f_true = logits.gather(0, labels.clamp(min=0)[None])[0]
      f_adv = logits.gather(0, adv.clamp(min=0)[None])[0]
      (r_m,) = torch.autograd.grad((f_adv - f_true)[active].sum(), x_m)
      norm = r_m.abs().max()
      if float(norm) == 0.0:
        break
      x_m = torch.clamp(x_m.detach() + gamma * r_m / norm, 0.0, 1.0)
      m += 1
    out.append(x_m.detach().numpy()[0].transpose(1, 2, 0))
    iters.append(m)
  return np.stack(out), np.asarray(iters)


def _np_derangements(rng, batch):
  perms = []
  while len(perms) < batch:
    p = rng.permutation(K)
    if np.all(p != np.arange(K)):
      perms.append(p)
  return np.stack(perms)


def colour_labels(x):
  """A local task: 0 (background) where every channel is below 0.5, else 1 + the brightest channel."""
  return np.where(x.max(-1) < 0.5, 0, 1 + x.argmax(-1)).astype(np.int32)


@pytest.fixture(scope="module")
def setup():
  """(logits_fn, params, x [6, 8, 8, 3], y [6, 8, 8], targets [6, 8, 8]), the net trained on colour_labels."""
  model = TinySeg()
  rng = np.random.default_rng(0)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))["params"]
  tx = optax.adam(3e-2)

  @jax.jit
  def step(params, opt, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply({"params": p}, x), y).mean()
    updates, opt = tx.update(jax.grad(loss)(params), opt)
    return optax.apply_updates(params, updates), opt

  opt = tx.init(params)
  for _ in range(150):
    xb = rng.uniform(size=(32, 8, 8, 3)).astype(np.float32)
    params, opt = step(params, opt, xb, colour_labels(xb))
  logits_fn = lambda v: model.apply({"params": params}, v)  # noqa: E731
  x = rng.uniform(0.1, 0.9, size=(6, 8, 8, 3)).astype(np.float32)
  x[3] = (x[3] > 0.5).astype(np.float32)  # Saturated: the box binds at once.
  y = colour_labels(x)
  y[0, :2] = -1                           # ignored rows
  y[1, 3:5] = (y[1, 3:5] + 1) % K         # wrong labels: never active
  y[2] = 0                                # background only: nothing to attack
  y[4, :, ::2] = -1
  targets = np.stack([p[np.maximum(l, 0)] for p, l in zip(_np_derangements(rng, 6), y)]).astype(np.int32)
  targets[y < 0] = -1
  return logits_fn, params, x, y, targets


@pytest.fixture(scope="module")
def result(setup):
  logits_fn, _, x, y, targets = setup
  return dag_lib.dag(logits_fn, jnp.asarray(x), jnp.asarray(y), KEY, CFG, jnp.asarray(targets))


def _np_active_count(logits_fn, images, y, background=0):
  pred = np.asarray(logits_fn(jnp.asarray(images))).argmax(-1)
  return ((pred == y) & (y >= 0) & (y != background)).sum((1, 2))


def test_matches_per_image_torch_reference(setup, result):
  logits_fn, params, x, y, targets = setup
  x_ref, iters_ref = torch_dag(_torch_net(params), x, y, targets, CFG.gamma, CFG.num_steps, 0)
  np.testing.assert_array_equal(np.asarray(result.iterations), iters_ref)
  diff = np.max(np.abs(np.asarray(result.x_adv) - x_ref))
  assert diff <= TORCH_ATOL, diff
  # A real attack: several images take several steps, the background-only image none.
  assert iters_ref[2] == 0 and np.sum(iters_ref >= 2) >= 3
  np.testing.assert_array_equal(np.asarray(result.x_adv)[2], x[2])


def test_active_set_empties_or_the_budget_is_spent(setup, result):
  logits_fn, _, x, y, _ = setup
  remaining = _np_active_count(logits_fn, np.asarray(result.x_adv), y)
  np.testing.assert_array_equal(np.asarray(result.remaining), remaining)
  iterations = np.asarray(result.iterations)
  assert np.all((remaining == 0) | (iterations == CFG.num_steps))
  assert np.all(_np_active_count(logits_fn, x, y)[[0, 1, 3, 4, 5]] > 0)
  # Converged images: every target pixel is now predicted differently from its label.
  assert np.sum(remaining == 0) >= 4


def test_the_budget_truncates_and_stopped_images_do_not_change(setup, result):
  logits_fn, params, x, y, targets = setup
  one = dag_lib.dag(logits_fn, jnp.asarray(x), jnp.asarray(y), KEY, dataclasses.replace(CFG, num_steps=1),
                    jnp.asarray(targets))
  full_iters = np.asarray(result.iterations)
  np.testing.assert_array_equal(np.asarray(one.iterations), np.minimum(full_iters, 1))
  x_ref, _ = torch_dag(_torch_net(params), x, y, targets, CFG.gamma, 1, 0)
  np.testing.assert_allclose(np.asarray(one.x_adv), x_ref, atol=TORCH_ATOL)
  # One step on an interior image has L-inf length gamma / 255 (gamma in 0-255 units).
  np.testing.assert_allclose(np.abs(np.asarray(one.perturbation[0])).max(), CFG.gamma / 255, rtol=1e-5)
  # The full run's images stop at different iterations (measured: 22, 37, 0, 40, 36, 40), so the
  # agreement with the per-image reference in test_matches_per_image_torch_reference also shows
  # that an image which has stopped stays put while the others go on.
  assert len(np.unique(full_iters[full_iters > 0])) >= 3
  np.testing.assert_array_equal(np.asarray(one.x_adv)[2], np.asarray(result.x_adv)[2])


@pytest.fixture(scope="module")
def frozen(setup):
  """DAG with default (random derangement) labels on a model for which image 1 is a constant input."""
  logits_fn, _, x, _, _ = setup
  scale = jnp.asarray([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]).reshape(6, 1, 1, 1)
  # Image 1's logits do not depend on x: r_m = 0 while its targets are active.
  frozen_fn = lambda v: logits_fn(v * scale)  # noqa: E731
  y = np.asarray(jnp.argmax(frozen_fn(jnp.asarray(x)), -1)).astype(np.int32)
  y[0, :, :3] = -1
  cfg = dataclasses.replace(CFG, background_class=-1)
  out = dag_lib.dag(frozen_fn, jnp.asarray(x), jnp.asarray(y), KEY, cfg)
  return x, y, out


def test_zero_gradient_stops_the_image(frozen):
  x, _, out = frozen
  assert np.all(np.isfinite(np.asarray(out.x_adv)))
  assert int(out.iterations[1]) == 0 and int(out.remaining[1]) == 64
  np.testing.assert_array_equal(np.asarray(out.x_adv[1]), x[1])
  assert int(out.iterations[0]) > 0 and int(out.remaining[0]) == 0


def test_box(setup, result):
  _, _, x, _, _ = setup
  x_adv = np.asarray(result.x_adv)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  np.testing.assert_array_equal(np.asarray(result.perturbation), x_adv - x)
  # On the saturated image the box really binds: coordinates stuck at 0 and 1 after many steps.
  assert np.any((x[3] == 1.0) & (x_adv[3] == 1.0)) and np.any((x[3] == 0.0) & (x_adv[3] == 0.0))
  assert np.abs(x_adv[3] - x[3]).max() > 0


def test_perceptibility_matches_numpy(result):
  r = np.asarray(result.perturbation, np.float64)
  expected = np.sqrt(np.mean(np.sum(r ** 2, axis=-1), axis=(1, 2)))
  np.testing.assert_allclose(np.asarray(result.perceptibility), expected, rtol=1e-5)
  assert expected[0] > 0 and expected[2] == 0


def test_perm_permutes_rows_and_columns(setup, result):
  _, _, x, _, _ = setup
  r = np.asarray(result.perturbation)
  permuted = np.asarray(result.perm_perturbation)
  for b in range(r.shape[0]):
    np.testing.assert_array_equal(np.sort(permuted[b].ravel()), np.sort(r[b].ravel()))
    # Row multisets: each permuted row is some original row with its columns shuffled the same way.
    rows = {tuple(np.sort(row.ravel())) for row in r[b]}
    assert all(tuple(np.sort(row.ravel())) in rows for row in permuted[b])
  assert not np.array_equal(permuted[0], r[0])
  np.testing.assert_array_equal(np.asarray(result.x_perm), np.clip(x + permuted, 0, 1))


def test_random_derangements_are_uniform():
  perms = np.asarray(dag_lib.random_derangements(jax.random.key(0), 1800, K))
  assert np.all(np.sort(perms, axis=1) == np.arange(K))  # permutations
  assert np.all(perms != np.arange(K))                    # without fixed point
  # K = 4 has 9 derangements (only 3 of them cyclic shifts); each should come up about 200 times.
  kinds, counts = np.unique(perms, axis=0, return_counts=True)
  assert len(kinds) == 9 and counts.min() > 140 and counts.max() < 260


def test_default_adversarial_labels(frozen):
  _, y, out = frozen
  adv = np.asarray(out.adversarial_labels)
  assert np.all(adv[y < 0] == -1) and np.all(adv[y >= 0] != y[y >= 0])
  # One permutation per image: pixels of one class share their adversarial label.
  for b in range(6):
    for c in np.unique(y[b][y[b] >= 0]):
      assert len(np.unique(adv[b][y[b] == c])) == 1
  perms = np.asarray([[1, 0, 3, 2], [3, 2, 1, 0]], np.int32)
  labels = jnp.asarray([[[0, 3], [-1, 2]], [[1, 1], [0, -1]]])
  np.testing.assert_array_equal(np.asarray(dag_lib.adversarial_labels(labels, perms)),
                                [[[1, 2], [-1, 3]], [[2, 2], [3, -1]]])


def test_config_errors(setup):
  logits_fn, _, x, y, _ = setup
  for bad in (dict(gamma=0.0), dict(gamma=float("inf")), dict(num_steps=-1), dict(num_steps=2.5),
              dict(background_class=-2)):
    with pytest.raises(ConfigError, match=next(iter(bad))):
      dag_lib.DAGConfig(**bad)
  with pytest.raises(ConfigError, match="unknown"):
    dag_lib.DAGConfig.from_config({"eps": 8.0})
  assert dag_lib.DAGConfig.from_config({"gamma": 1, "num_steps": 5}) == dag_lib.DAGConfig(1.0, 5, 0)
  # The old name is refused with the new one.
  with pytest.raises(ConfigError, match="'max_iter' is now 'num_steps'"):
    dag_lib.DAGConfig.from_config({"max_iter": 5})
  with pytest.raises(ConfigError, match="background_class"):
    dag_lib.dag(logits_fn, jnp.asarray(x), jnp.asarray(y), KEY, dag_lib.DAGConfig(background_class=K))
  with pytest.raises(ConfigError, match="2 classes"):
    dag_lib.random_derangements(KEY, 2, 1)
