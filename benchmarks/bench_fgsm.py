"""FGSM (L-inf, eps 0.3 = 76.5/255, one sign step from the clean image), JAX vs PyTorch on identical weights.

The JAX side is `advjax.attacks.attack` with the library's FGSM preset
(`advjax.attacks.pgd.fgsm(eps)`: one step of size eps from delta = 0, the
perturbation projected onto the eps ball and folded into the box [0, 1]),
one jitted program. The PyTorch side is timed as an idiomatic eager
`torch_fgsm` (below: the sign of the input gradient of the summed
cross-entropy, a step of eps, a clip to [0, 1]) in NCHW and channels_last,
and as `torchattacks.FGSM`, whose mean cross-entropy has the same gradient
sign. eps 0.3 is the usual MNIST radius; the model is the convnet trained
briefly on the embedded digits and attacked on test digits, in eval mode
(running BatchNorm statistics) on both sides.

Checked: the adversarial images of JAX and of each PyTorch attack agree,
except for the pixels where a gradient entry within rounding of zero takes
a different sign; if more differ than `bench_pgd.MAX_FLIPPED`, JAX must be
as close to a float64 PyTorch FGSM as float32 PyTorch is
(`harness.assert_images_close_or_as_accurate`). The accuracy under attack
of both sides is reported.

Run: `python -m benchmarks.bench_fgsm [--models convnet --torch-compile off --budget 20]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax import attacks
from advjax.attacks import threat
from benchmarks import bench_pgd, harness

EPS = 76.5  # 0-255 pixel units: 0.3 on [0, 1].


def torch_fgsm(tm, x, y, *, eps: float, dtype: str = "float32"):
  """Idiomatic PyTorch FGSM from the clean image; eps on the [0, 1] scale."""
  x = x.clone().requires_grad_(True)
  with harness.autocast(dtype):
    loss = F.cross_entropy(harness.loss_logits(tm(x)), y, reduction="sum")
  (grad,) = torch.autograd.grad(loss, x)
  return torch.clamp(x.detach() + eps * grad.sign(), 0.0, 1.0)


def accuracy(logits, y) -> float:
  return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(y)))


def build(spec: harness.Spec) -> harness.Workload:
  import torchattacks  # Only the attack benchmarks need it.

  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  cfg = attacks.pgd.fgsm(eps=EPS)
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  rng = jax.random.key(0)
  eps = threat.to_unit(EPS)
  notes: list[str] = [f"eps {EPS}/255 (0.3), one step of eps from the clean image"]
  variants = harness.torch_variants(m.torch_model.eval(), spec, notes)
  ta = torchattacks.FGSM(variants["torch eager"][0], eps=eps)

  def run_torchattacks(xt, yt):
    with harness.autocast(spec.dtype):
      return ta(xt, yt)

  def check():
    x_adv = np.asarray(attacks.attack(logits_fn, xj, yj, rng, cfg))
    xt, yt = harness.to_torch(x, y)
    flipped = bench_pgd.MAX_FLIPPED[spec.dtype]
    reference = harness.to_nhwc(torch_fgsm(harness.float64_twin(m.torch_model).eval(), xt.double(), yt,
                                           eps=eps))
    loop = harness.to_nhwc(torch_fgsm(m.torch_model, xt, yt, eps=eps, dtype=spec.dtype))
    with torch.no_grad():
      torch_acc = accuracy(m.torch_model(harness.to_torch(loop, y)[0]).float().cpu(), y)
    return {
        "pixels differing (loop)": harness.assert_images_close_or_as_accurate(
            "x_adv vs torch loop", x_adv, loop, reference, eps, flipped),
        "pixels differing (torchattacks)": harness.assert_images_close_or_as_accurate(
            "x_adv vs torchattacks", x_adv, harness.to_nhwc(run_torchattacks(xt, yt)), reference, eps,
            flipped),
        "linf": float(np.max(np.abs(x_adv - x))) - eps,  # <= 0: inside the ball
        "clean accuracy": accuracy(logits_fn(xj), y),
        "adv accuracy (jax)": accuracy(logits_fn(jnp.asarray(x_adv)), y),
        "adv accuracy (torch)": torch_acc,
    }

  timers = {"jax": lambda: jax.block_until_ready(attacks.attack(logits_fn, xj, yj, rng, cfg))}
  for name, (tm, channels_last) in variants.items():
    xt, yt = harness.to_torch(x, y, channels_last)

    def run(tm=tm, xt=xt, yt=yt):
      torch_fgsm(tm, xt, yt, eps=eps, dtype=spec.dtype)
      harness.torch_sync()

    timers[name] = run
  xt, yt = harness.to_torch(x, y)

  def run_ta():
    run_torchattacks(xt, yt)
    harness.torch_sync()

  timers["torchattacks.FGSM"] = run_ta
  # One forward and input gradient; the projection and clip are elementwise.
  flops = lambda: bench_pgd.input_grad_flops(m.model, m.variables, xj, yj)
  return harness.Workload("fgsm", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build, default_models=("convnet",))
