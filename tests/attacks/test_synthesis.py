"""Inpainting (eq. 6) and generation (eq. 7) on a hand-made linear per-pixel segmentation model.

The model is logits[b, h, w] = x[b, h, w] W + c (a 1x1 convolution), so the
cross-entropy is convex in x and the reference loops are a few lines of
PyTorch. Checked: the hard constraint leaves unmasked pixels exactly alone;
the soft one with a huge lambda keeps them within one step of x, and with
lambda = 0 equals advjax's targeted PGD without an eps ball from the same
start; generation equals a plain PyTorch PGD loop step by step, and lowers
the cross-entropy at every step.
"""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from advjax import tasks
from advjax.attacks import losses, pgd, synthesis
from advjax.errors import ConfigError

B, H, W, C, K = 3, 6, 6, 3, 4
_rng = np.random.default_rng(0)
WEIGHT = _rng.normal(0.0, 2.0, (C, K)).astype(np.float32)
BIAS = _rng.normal(0.0, 0.5, K).astype(np.float32)


def logits_fn(x):
  """The linear per-pixel model: [B, H, W, C] -> [B, H, W, K]."""
  return jnp.einsum("bhwc,ck->bhwk", x, WEIGHT) + BIAS


def _data():
  rng = np.random.default_rng(1)
  x = rng.uniform(0.0, 1.0, (B, H, W, C)).astype(np.float32)
  x[0, 0, 0] = 0.0  # Pixels on the box's faces, where a stray step would be clipped.
  x[1, 5, 5] = 1.0
  y = rng.integers(0, K, (B, H, W)).astype(np.int32)
  y[0, 1, :3] = -1
  mask = np.zeros((B, H, W), np.float32)
  mask[0, 1:4, 1:4] = 1
  mask[1, 0:2, 3:6] = 1
  mask[2, 2:6, 0:3] = 1
  return x, y, mask


def _assert_in_the_box_that_binds(out, region):
  """out lies in [0, 1], and some pixel of the region sits on a face: the clip was active there."""
  assert out.min() >= 0.0 and out.max() <= 1.0
  on_face = (out == 0.0) | (out == 1.0)
  assert on_face[np.broadcast_to(region[..., None] > 0, out.shape)].any()


@pytest.mark.parametrize("constraint", ["hard", "soft", "generate"])
@pytest.mark.parametrize("rule,step", [("sign", 255.0), ("l2", 2000.0)])
def test_results_stay_in_the_box_where_steps_would_leave_it(constraint, rule, step):
  """Steps far longer than the box: every iterate is clipped back, so the box binds and must hold."""
  x, y, mask = _data()
  cfg = _cfg(num_steps=3, step_rule=rule, step_size=step, constraint="soft" if constraint == "generate" else constraint)
  if constraint == "generate":
    out, mask = synthesis.generate(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), cfg), np.ones(y.shape)
  else:
    out = synthesis.inpaint(logits_fn, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(y), jax.random.key(0), cfg)
  _assert_in_the_box_that_binds(np.asarray(out), mask)


def _cfg(**kw):
  return synthesis.SynthesisConfig(**{**dict(num_steps=10, step_size=8.0, step_rule="sign", penalty=0.0), **kw})


@pytest.mark.parametrize("rule", ["sign", "l2"])
def test_hard_constraint_changes_only_masked_pixels(rule):
  x, y, mask = _data()
  cfg = _cfg(constraint="hard", step_rule=rule, step_size=8.0 if rule == "sign" else 64.0, penalty=5.0)
  out = np.asarray(synthesis.inpaint(logits_fn, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(y),
                                     jax.random.key(0), cfg))
  outside = mask == 0
  np.testing.assert_array_equal(out[outside], x[outside])
  start = np.asarray(synthesis.start_image(jnp.asarray(x), jnp.asarray(mask)))
  assert np.abs(out - start)[mask > 0].max() > 0.05  # The masked pixels did move.
  ce = lambda im: np.asarray(losses.cross_entropy(logits_fn(jnp.asarray(im)), jnp.asarray(y)))
  assert np.all(ce(out) < ce(start) - 1e-3)


def test_hard_constraint_accepts_a_channel_axis_on_the_mask():
  x, y, mask = _data()
  cfg = _cfg(constraint="hard", num_steps=3)
  args = (jnp.asarray(x), None, jnp.asarray(y), jax.random.key(0), cfg)
  a = synthesis.inpaint(logits_fn, args[0], jnp.asarray(mask), *args[2:])
  b = synthesis.inpaint(logits_fn, args[0], jnp.asarray(mask)[..., None], *args[2:])
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="mask shape"):
    synthesis.inpaint(logits_fn, args[0], jnp.asarray(mask)[:, :4], *args[2:])


def test_soft_penalty_holds_the_unmasked_pixels():
  x, y, mask = _data()
  alpha = 8.0 / 255.0
  run = lambda lam: np.asarray(synthesis.inpaint(logits_fn, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(y),
                                                 jax.random.key(0), _cfg(constraint="soft", penalty=lam)))
  outside = mask == 0
  held, free = run(1e6), run(0.0)
  # A sign step moves every pixel by alpha; a dominant penalty sends it straight back.
  assert np.abs(held - x)[outside].max() <= alpha + 1e-6
  assert np.abs(free - x)[outside].max() > 3 * alpha
  # With the penalty the masked region still follows the cross-entropy.
  start = np.asarray(synthesis.start_image(jnp.asarray(x), jnp.asarray(mask)))
  assert np.abs(held - start)[mask > 0].max() > 3 * alpha


@pytest.mark.parametrize("rule", ["sign", "l2"])
def test_soft_without_penalty_is_targeted_pgd_without_a_ball(rule):
  x, y, mask = _data()
  step = 8.0 if rule == "sign" else 48.0
  cfg = _cfg(constraint="soft", penalty=0.0, step_rule=rule, step_size=step)
  out = synthesis.inpaint(logits_fn, jnp.asarray(x), jnp.asarray(mask), jnp.asarray(y), jax.random.key(0), cfg)
  start = synthesis.start_image(jnp.asarray(x), jnp.asarray(mask))
  # A ball that holds the whole box: radius 255 (L-inf) or far beyond the box's diameter (L2).
  norm = "linf" if rule == "sign" else "l2"
  attack_cfg = pgd.AttackConfig(norm=norm, eps=255.0 if norm == "linf" else 1e4, step_size=step, num_steps=10,
                                init="zero", step_rule=rule, targeted=True)
  ref = pgd.attack(logits_fn, start, jnp.asarray(y), jax.random.key(0), attack_cfg, targets=jnp.asarray(y),
                   task=tasks.Segmentation(K))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def _torch_generate(x, y, steps, alpha, rule):
  """Eq. 7 by a plain PyTorch loop: every iterate, from the per-channel mean image."""
  weight, bias = torch.tensor(WEIGHT), torch.tensor(BIAS)
  target = torch.tensor(y, dtype=torch.long)
  valid = (target >= 0).float()
  z = torch.tensor(x).mean(dim=(1, 2), keepdim=True).expand(*x.shape).clone()
  iterates = [z.numpy().copy()]
  for _ in range(steps):
    z.requires_grad_(True)
    logits = torch.einsum("bhwc,ck->bhwk", z, weight) + bias
    ce = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), target.clamp(min=0), reduction="none")
    loss = ((ce * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2))).sum()
    (g,) = torch.autograd.grad(loss, z)
    if rule == "sign":
      d = g.sign()
    else:
      d = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    z = (z.detach() - alpha * d).clamp(0.0, 1.0)
    iterates.append(z.numpy().copy())
  return iterates


def test_generation_matches_pytorch_step_by_step_and_lowers_the_loss():
  x, y, _ = _data()
  steps, step = 6, 40.0
  ref = _torch_generate(x, y, steps, step / 255.0, "l2")
  ce = []
  for k in range(steps + 1):
    cfg = _cfg(num_steps=k, step_rule="l2", step_size=step)
    out = np.asarray(synthesis.generate(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), cfg))
    np.testing.assert_allclose(out, ref[k], atol=2e-5)
    ce.append(np.asarray(losses.cross_entropy(logits_fn(jnp.asarray(out)), jnp.asarray(y))))
  ce = np.stack(ce)
  assert np.all(np.diff(ce, axis=0) < 0), ce  # Every step lowers every image's cross-entropy.
  assert np.all(ce[-1] < ce[0] - 0.2)


def test_linf_generation_matches_pytorch():
  x, y, _ = _data()
  ref = _torch_generate(x, y, 8, 6.0 / 255.0, "sign")[-1]
  out = synthesis.generate(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                           _cfg(num_steps=8, step_size=6.0))
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)


def test_generation_is_inpainting_of_everything_whatever_the_constraint_and_fill():
  x, y, _ = _data()
  args = (jnp.asarray(x), jnp.asarray(y), jax.random.key(0))
  base = np.asarray(synthesis.generate(logits_fn, *args, _cfg(num_steps=4)))
  for kw in (dict(constraint="hard"), dict(fill="visible"), dict(penalty=3.0)):
    np.testing.assert_array_equal(np.asarray(synthesis.generate(logits_fn, *args, _cfg(num_steps=4, **kw))), base)
  full = np.asarray(synthesis.inpaint(logits_fn, args[0], jnp.ones((B, H, W)), *args[1:], _cfg(num_steps=4)))
  np.testing.assert_array_equal(full, base)


def test_start_image_fills_with_the_chosen_channel_mean():
  x, _, mask = _data()
  m = mask[..., None] > 0
  for fill in ("image", "visible"):
    start = np.asarray(synthesis.start_image(jnp.asarray(x), jnp.asarray(mask), fill))
    for b in range(B):
      pixels = x[b].reshape(-1, C) if fill == "image" else x[b][~m[b, ..., 0]]
      expected = np.where(m[b], pixels.mean(axis=0), x[b])
      np.testing.assert_allclose(start[b], expected, rtol=1e-6)
    np.testing.assert_array_equal(start[~np.broadcast_to(m, x.shape)], x[~np.broadcast_to(m, x.shape)])


def test_square_masks_centre_on_foreground():
  labels = np.zeros((4, 12, 10), np.int32)
  labels[0, 0, 0] = 3           # Corner pixel: the square must shift inside.
  labels[1, 5:8, 4:6] = 1
  labels[2] = -1                # No foreground at all: any centre.
  labels[3, 11, 9] = 2
  side = 4
  masks = np.asarray(synthesis.square_masks(jax.random.key(3), jnp.asarray(labels), side))
  assert masks.shape == labels.shape and set(np.unique(masks)) <= {0.0, 1.0}
  for b in range(4):
    assert masks[b].sum() == side * side
    rows, cols = np.nonzero(masks[b])
    assert rows.max() - rows.min() == side - 1 and cols.max() - cols.min() == side - 1
    if (labels[b] > 0).any():
      assert (masks[b] * (labels[b] > 0)).sum() >= 1
  # Different keys give different squares on a large foreground.
  big = np.ones((1, 30, 30), np.int32)
  draws = {np.asarray(synthesis.square_masks(jax.random.key(k), jnp.asarray(big), 3)).tobytes() for k in range(6)}
  assert len(draws) > 1
  with pytest.raises(ValueError, match="side"):
    synthesis.square_masks(jax.random.key(0), jnp.asarray(labels), 11)


@pytest.mark.parametrize("field,value", [("step_rule", "momentum"), ("step_rule", "linf"), ("constraint", "medium"),
                                         ("fill", "zero"), ("num_steps", -1), ("step_size", -1.0),
                                         ("penalty", float("nan"))])
def test_config_errors_name_the_field(field, value):
  with pytest.raises(ConfigError, match=field):
    synthesis.SynthesisConfig(**{field: value})
  with pytest.raises(ConfigError, match="unknown"):
    synthesis.SynthesisConfig.from_config({"lambda": 1.0})
