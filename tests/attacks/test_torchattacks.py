"""Cross-check against torchattacks 3.5.1 on identical weights.

The trained flax TinyCNN is ported to an equivalent torch module (conv kernels
HWIO -> OIHW; the dense kernel's rows reordered from NHWC to NCHW flattening),
both in float32. Sign steps can flip where a gradient coordinate is ~0 and the
two frameworks round differently, so images are compared by the fraction of
pixels that differ by more than 1e-4 (must be < 1e-3); a wrong update rule,
step size or clipping moves most pixels and fails that bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")

from advjax.attacks import deepfool as deepfool_lib  # noqa: E402
from advjax.attacks import pgd as pgd_lib  # noqa: E402
from tests.attacks import tiny_models  # noqa: E402

torch.set_num_threads(1)


class TorchTinyCNN(torch.nn.Module):
  """The torch twin of tests.attacks.tiny_models.TinyCNN, on [0, 1] NCHW inputs."""

  def __init__(self, params):
    super().__init__()
    self.conv0 = torch.nn.Conv2d(1, 8, 3, padding=1)
    self.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
    self.dense = torch.nn.Linear(8 * 8 * 8, 10)
    p = jax.tree.map(np.array, params)
    with torch.no_grad():
      for conv, name in ((self.conv0, "Conv_0"), (self.conv1, "Conv_1")):
        conv.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
        conv.bias.copy_(torch.from_numpy(p[name]["bias"]))
      kernel = p["Dense_0"]["kernel"]  # [(h, w, c), out]
      kernel = kernel.reshape(8, 8, 8, 10).transpose(2, 0, 1, 3).reshape(512, 10)
      self.dense.weight.copy_(torch.from_numpy(kernel.T.copy()))
      self.dense.bias.copy_(torch.from_numpy(p["Dense_0"]["bias"]))

  def forward(self, x):
    x = torch.relu(self.conv0(x))
    x = torch.relu(self.conv1(x))
    return self.dense(x.flatten(1))


@pytest.fixture(scope="module")
def twin(model_and_variables, batch):
  _, variables = model_and_variables
  net = TorchTinyCNN(variables["params"]).eval()
  x, y = batch
  return net, torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()), \
      torch.from_numpy(np.asarray(y).astype(np.int64))


def _to_nhwc(t):
  return np.asarray(t.detach().numpy()).transpose(0, 2, 3, 1)


def test_port_gives_same_logits(twin, logits_fn, batch):
  net, xt, _ = twin
  np.testing.assert_allclose(net(xt).detach().numpy(), np.asarray(logits_fn(batch[0])),
                             atol=1e-4, rtol=1e-4)


CASES = {
    "fgsm": (lambda m: torchattacks.FGSM(m, eps=16 / 255), pgd_lib.fgsm(16.0)),
    "bim": (lambda m: torchattacks.BIM(m, eps=16 / 255, alpha=2 / 255, steps=10),
            pgd_lib.bim(16.0, step_size=2.0, num_steps=10)),
    "pgd": (lambda m: torchattacks.PGD(m, eps=16 / 255, alpha=2 / 255, steps=10,
                                       random_start=False),
            pgd_lib.pgd(16.0, step_size=2.0, num_steps=10, init="zero")),
    "mifgsm": (lambda m: torchattacks.MIFGSM(m, eps=16 / 255, alpha=2 / 255, steps=10,
                                             decay=1.0),
               pgd_lib.mi_fgsm(16.0, step_size=2.0, num_steps=10, momentum=1.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_attacks_match_torchattacks(name, twin, logits_fn, batch):
  make_torch, cfg = CASES[name]
  net, xt, yt = twin
  x, y = batch
  ours = np.asarray(pgd_lib.attack(logits_fn, x, y, jax.random.key(0), cfg))
  theirs = _to_nhwc(make_torch(net)(xt, yt))
  diff = np.abs(ours - theirs)
  assert np.mean(diff > 1e-4) < 1e-3, (name, np.mean(diff > 1e-4))
  # The attack moved the images, so agreement is not the trivial x == x.
  assert np.mean(np.abs(ours - np.asarray(x)) > 1e-4) > 0.2


def _deepfool_both(net, logits_fn, x, y):
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(np.asarray(y).astype(np.int64))
  ours = deepfool_lib.deepfool(logits_fn, x, y, jax.random.key(0),
                               deepfool_lib.DeepFoolConfig(num_steps=50, overshoot=0.02))
  theirs = jnp.asarray(_to_nhwc(torchattacks.DeepFool(net, steps=50, overshoot=0.02)(xt, yt)))
  success = lambda a: float(np.mean(np.asarray(jnp.argmax(logits_fn(a), -1) != y)))
  norm = lambda a: np.median(np.sqrt(np.sum(np.square(np.asarray(a - x)), axis=(1, 2, 3))))
  return success(ours), success(theirs), norm(ours) / norm(theirs)


def test_deepfool_matches_torchattacks_inside_the_box(twin, logits_fn):
  """Away from the box faces both implementations take the same steps.

  Digits are squeezed into [0.15, 0.85] so that no step is clipped by [0, 1].
  """
  net, _, _ = twin
  _, _, x, y = tiny_models.digits()
  x = jnp.asarray(0.15 + 0.7 * x)
  ok = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  x, y = x[ok][:32], jnp.asarray(y[ok][:32])
  ours, theirs, ratio = _deepfool_both(net, logits_fn, x, y)
  assert ours >= 0.9 and abs(ours - theirs) <= 2 / 32, (ours, theirs)
  # Measured: the median L2 norms agree to 1.4e-5 (same steps up to float rounding).
  assert abs(ratio - 1.0) <= 1e-3, ratio


def test_deepfool_at_least_as_successful_on_saturated_digits(twin, logits_fn, batch):
  """On raw digits (many pixels at 0 or 1) clipping shortens torchattacks' steps.

  torchattacks applies the overshoot to each clipped step, so it approaches the
  boundary geometrically and often stalls on it; the reference algorithm keeps
  the unclipped total r_tot and overshoots that, which crosses.
  """
  net, _, _ = twin
  ours, theirs, _ = _deepfool_both(net, logits_fn, *batch)
  assert ours >= 0.9 and ours >= theirs, (ours, theirs)


def test_comparison_detects_a_wrong_step_size(twin, logits_fn, batch):
  """The tolerance is tight enough to fail: alpha 1 vs torchattacks' alpha 2."""
  net, xt, yt = twin
  ours = np.asarray(pgd_lib.attack(logits_fn, *batch, jax.random.key(0),
                                   pgd_lib.bim(16.0, step_size=1.0, num_steps=10)))
  theirs = _to_nhwc(torchattacks.BIM(net, eps=16 / 255, alpha=2 / 255, steps=10)(xt, yt))
  assert np.mean(np.abs(ours - theirs) > 1e-4) > 1e-2
