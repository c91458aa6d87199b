"""PGD-10 (L-inf, eps 8/255, step 2/255, no random start), JAX vs PyTorch on identical weights.

The JAX side is `advjax.attacks.attack`: one jitted program whose ten steps
run in a `lax.fori_loop`, with no Python between steps. The PyTorch side is
timed three ways: an idiomatic eager loop (`torch_pgd`, below), the same loop
over a `torch.compile`d model, and `torchattacks.PGD(random_start=False)`,
the library most adversarial-robustness code calls. The model runs in eval
mode (running BatchNorm statistics) on both sides, as an evaluation attack.

Checked: the adversarial images of JAX and of each PyTorch attack agree,
except for the few pixels where a gradient entry within rounding of zero
takes a different sign (see `harness.assert_images_close`).

Run: `python -m benchmarks.bench_pgd [--models resnet20 --batch 32 --steps 10]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax import attacks
from advjax.attacks import losses, threat
from benchmarks import harness

EPS, STEP_SIZE = 8.0, 2.0  # 0-255 pixel units
# Sign flips from rounding touch a small fraction of pixels (see the docstring).
MAX_FLIPPED = {"float32": 0.02, "bfloat16": 0.25}


def torch_pgd(tm, x, y, *, eps: float, alpha: float, steps: int, dtype: str = "float32"):
  """Idiomatic PyTorch L-inf PGD from the clean image; eps and alpha on the [0, 1] scale."""
  return torch_pgd_from(tm, x, y, x.clone(), eps=eps, alpha=alpha, steps=steps, dtype=dtype)


def torch_pgd_from(tm, x, y, x_adv, *, eps: float, alpha: float, steps: int, dtype: str = "float32"):
  """`torch_pgd` from the starting point `x_adv` (inside the eps ball and [0, 1])."""
  for _ in range(steps):
    x_adv.requires_grad_(True)
    with harness.autocast(dtype):
      loss = F.cross_entropy(harness.loss_logits(tm(x_adv)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv = x_adv.detach() + alpha * grad.sign()
    x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
  return x_adv


def attack_config(steps: int) -> attacks.AttackConfig:
  return attacks.AttackConfig(eps=EPS, step_size=STEP_SIZE, num_steps=steps, init="zero")


def input_grad_flops(model, variables, x, y) -> float:
  """FLOPs of one attack step: forward and input gradient (XLA counts a loop body once)."""

  def loss(x_in):
    return jnp.sum(losses.cross_entropy(model.apply(variables, x_in, train=False), y))

  return harness.step_flops(jax.grad(loss), x)


def build(spec: harness.Spec) -> harness.Workload:
  import torchattacks  # Only the PGD benchmark needs it.

  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  cfg = attack_config(spec.steps)
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  rng = jax.random.key(0)
  eps, alpha = threat.to_unit(EPS), threat.to_unit(STEP_SIZE)
  notes: list[str] = []
  variants = harness.torch_variants(m.torch_model.eval(), spec, notes)
  ta_model = variants["torch eager"][0]
  ta = torchattacks.PGD(ta_model, eps=eps, alpha=alpha, steps=spec.steps, random_start=False)

  def run_torchattacks(xt, yt):
    with harness.autocast(spec.dtype):
      return ta(xt, yt)

  def check():
    x_adv = np.asarray(attacks.attack(logits_fn, xj, yj, rng, cfg))
    xt, yt = harness.to_torch(x, y)
    flipped = MAX_FLIPPED[spec.dtype]
    reference = harness.to_nhwc(torch_pgd(harness.float64_twin(m.torch_model).eval(), xt.double(), yt,
                                          eps=eps, alpha=alpha, steps=spec.steps))
    return {
        "pixels differing (loop)": harness.assert_images_close_or_as_accurate(
            "x_adv vs torch loop", x_adv,
            harness.to_nhwc(torch_pgd(m.torch_model, xt, yt, eps=eps, alpha=alpha, steps=spec.steps,
                                      dtype=spec.dtype)), reference, alpha, flipped),
        "pixels differing (torchattacks)": harness.assert_images_close_or_as_accurate(
            "x_adv vs torchattacks", x_adv, harness.to_nhwc(run_torchattacks(xt, yt)), reference,
            alpha, flipped),
        "linf": float(np.max(np.abs(x_adv - x))) - eps,  # <= 0: inside the ball
    }

  timers = {"jax": lambda: jax.block_until_ready(attacks.attack(logits_fn, xj, yj, rng, cfg))}
  for name, (tm, channels_last) in variants.items():
    xt, yt = harness.to_torch(x, y, channels_last)

    def run(tm=tm, xt=xt, yt=yt):
      torch_pgd(tm, xt, yt, eps=eps, alpha=alpha, steps=spec.steps, dtype=spec.dtype)
      harness.torch_sync()

    timers[name] = run
  xt, yt = harness.to_torch(x, y)

  def run_ta():
    run_torchattacks(xt, yt)
    harness.torch_sync()

  timers["torchattacks.PGD"] = run_ta
  flops = lambda: spec.steps * input_grad_flops(m.model, m.variables, xj, yj)
  return harness.Workload(f"pgd{spec.steps}", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build)
