"""One low-cost universal-adversarial-training step (Shafahi et al., algorithm 4), JAX vs PyTorch.

The step: one training-mode forward/backward on clip(x + delta, 0, 1) gives
both the weight gradient and the gradient of the one shared perturbation
delta; the weights take an SGD-momentum step and delta an FGSM ascent step
(delta += eps sign(g), projected onto the eps ball). The cost of natural
training. The JAX side is the library's `uat_simultaneous` objective
(`advjax.training.objectives.uat`), compiled by `compile_train_step`; the PyTorch side
the textbook loop with delta a leaf tensor broadcast over the batch, its box
clip written with `harness.clip_like_jax`: on the digits x + delta starts on
the box's edge for most pixels, where `torch.clamp`'s gradient differs from
`jnp.clip`'s (with `torch.clamp` 4.85% of delta's pixels differed after the
step, with it 0.51%).

Checked: after one step from the same state the parameter updates, the
running statistics and delta agree.

Run: `python -m benchmarks.bench_uat [--models resnet20]`.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax.attacks import threat
from advjax.training.objectives import uat
from benchmarks import bench_fwd_bwd, bench_pgd_at, harness

OBJECTIVE = "uat_simultaneous"


def torch_uat_step(tm, opt, delta, x, y, *, eps: float, dtype: str) -> None:
  """One step of algorithm 4; `delta` [1, C, H, W] is updated in place."""
  tm.train()
  delta.requires_grad_(True)
  opt.zero_grad(set_to_none=True)
  delta.grad = None
  with harness.autocast(dtype):
    logits = tm(harness.clip_like_jax(x + delta, 0.0, 1.0))
    loss = F.cross_entropy(harness.loss_logits(logits), y)
  loss.backward()
  opt.step()
  with torch.no_grad():
    delta.add_(eps * delta.grad.sign()).clamp_(-eps, eps)


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  config = bench_pgd_at.train_config(spec, OBJECTIVE)
  size, channels, _ = spec.shape
  step, fresh_state, _, _ = bench_pgd_at.jax_train_step(m, spec, OBJECTIVE)
  eps = threat.to_unit(float(config.uat.eps))
  tol = 10 * harness.TOLERANCE[spec.dtype]
  notes = [f"delta rule '{config.uat.step_rule}', eps {config.uat.eps}/255"]

  def new_delta(channels_last=False):
    d = torch.zeros(1, channels, size, size, device=harness.torch_device())
    return d.contiguous(memory_format=torch.channels_last) if channels_last else d

  def check():
    before = harness.torch_params(m.torch_model)
    state, _ = step(fresh_state(), batch)
    tm = copy.deepcopy(m.torch_model)
    xt, yt = harness.to_torch(x, y)
    delta = new_delta()
    torch_uat_step(tm, bench_pgd_at.make_optimizer(tm), delta, xt, yt, eps=eps, dtype=spec.dtype)
    ref = harness.float64_twin(m.torch_model)
    torch_uat_step(ref, bench_pgd_at.make_optimizer(ref), new_delta().double(), xt.double(), yt,
                   eps=eps, dtype="float32")
    errors = bench_pgd_at.check_update(spec, before, state, tm, tol, ref)
    errors["delta pixels differing"] = harness.assert_images_close(
        "delta", np.asarray(state.extras[uat.DELTA])[None], harness.to_nhwc(delta), eps,
        bench_pgd_at.bench_pgd.MAX_FLIPPED[spec.dtype])
    return errors

  def torch_run(tm, xt, yt, channels_last):
    opt = bench_pgd_at.make_optimizer(tm)
    delta = new_delta(channels_last)
    return lambda: torch_uat_step(tm, opt, delta, xt, yt, eps=eps, dtype=spec.dtype)

  timers = bench_pgd_at.train_step_timers(step, fresh_state, batch, m, spec, x, y, notes, torch_run)
  # One forward/backward; the delta gradient rides on the input gradient it already computes.
  flops = lambda: harness.step_flops(bench_fwd_bwd.jax_fwd_bwd(m.model), m.variables["params"],
                            m.variables["batch_stats"], batch["image"], batch["label"])
  return harness.Workload("uat_low_cost", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build)
