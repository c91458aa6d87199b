"""One shared-adversarial-training step (heap adversary, Mummadi et al. sec. 4), JAX vs PyTorch.

The step: the batch is split into heaps of s consecutive images and PGD-k
finds one perturbation per heap (L-inf, eps 8/255, step 2/255, from zero) on
the heap's mean cross-entropy, each heap's perturbation broadcast to its
members and clipped to the image box in every pass; then one
training-mode forward/backward on the adversarial batch and an SGD-momentum
update, as in `bench_pgd_at`. The JAX side is the library's `shared_at`
objective (`advjax.attacks.heap`: a reshape and a broadcast, the model sees
the flat batch once per attack step); the PyTorch side holds the perturbation
as a [heaps, C, H, W] leaf tensor, repeats it over each heap and clips with
`harness.clip_like_jax` (on the digits, with `torch.clamp`'s gradient at the
box's edge the parameter updates differed by 3.4%, with it by 0.5%). (The loss
thresholding of sec. 4.3 costs nothing extra; it is left out because at the
benchmark's random weights every loss is above the threshold, so no gradient
would reach the perturbation and the agreement check would test nothing.)

Checked: after one step from the same state the parameter updates and the
BatchNorm running statistics of both sides agree.

Run: `python -m benchmarks.bench_shared_at [--models resnet20 --steps 7]`.
"""

from __future__ import annotations

import copy
import math

import jax.numpy as jnp
import torch
import torch.nn.functional as F

from advjax.attacks import threat
from benchmarks import bench_pgd, bench_pgd_at, harness

OBJECTIVE = "shared_at"
HEAP_SIZE = 8  # Or the largest power of two dividing a smaller batch.


def heap_size_for(batch: int) -> int:
  return math.gcd(HEAP_SIZE, batch)


def torch_heap_pgd(tm, x, y, *, heap_size: int, eps: float, alpha: float, steps: int,
                   dtype: str = "float32"):
  """L-inf PGD with one perturbation per heap of `heap_size` consecutive images, from zero."""
  n, c, h, w = x.shape
  delta = torch.zeros(n // heap_size, c, h, w, device=x.device, dtype=x.dtype)
  for _ in range(steps):
    delta.requires_grad_(True)
    x_adv = harness.clip_like_jax(x + delta.repeat_interleave(heap_size, dim=0), 0.0, 1.0)
    with harness.autocast(dtype):
      per_example = F.cross_entropy(harness.loss_logits(tm(x_adv)), y, reduction="none")
    loss = per_example.sum() / heap_size
    (grad,) = torch.autograd.grad(loss, delta)
    delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
  return torch.clamp(x + delta.repeat_interleave(heap_size, dim=0), 0.0, 1.0)


def torch_shared_at_step(tm, opt, x, y, *, heap_size: int, steps: int, dtype: str) -> None:
  """Heap attack in eval mode, then one SGD step on the adversarial batch in training mode."""
  tm.eval()
  x_adv = torch_heap_pgd(tm, x, y, heap_size=heap_size, eps=threat.to_unit(bench_pgd.EPS),
                         alpha=threat.to_unit(bench_pgd.STEP_SIZE), steps=steps, dtype=dtype)
  tm.train()
  opt.zero_grad(set_to_none=True)
  with harness.autocast(dtype):
    loss = F.cross_entropy(harness.loss_logits(tm(x_adv)), y)
  loss.backward()
  opt.step()


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  s = heap_size_for(spec.batch)

  def configure(c):
    c.adversarial.heap_size = s

  step, fresh_state, _, _ = bench_pgd_at.jax_train_step(m, spec, OBJECTIVE, configure=configure)
  notes = [f"sharedness s = {s} ({spec.batch // s} heaps), attack from zero"]
  tol = 10 * harness.TOLERANCE[spec.dtype]

  def torch_step(tm, opt, xt, yt, dtype):
    torch_shared_at_step(tm, opt, xt, yt, heap_size=s, steps=spec.steps, dtype=dtype)

  def check():
    before = harness.torch_params(m.torch_model)
    state, _ = step(fresh_state(), batch)
    tm = copy.deepcopy(m.torch_model)
    xt, yt = harness.to_torch(x, y)
    torch_step(tm, bench_pgd_at.make_optimizer(tm), xt, yt, spec.dtype)
    ref = harness.float64_twin(m.torch_model)
    torch_step(ref, bench_pgd_at.make_optimizer(ref), xt.double(), yt, "float32")
    return bench_pgd_at.check_update(spec, before, state, tm, tol, ref)

  def torch_run(tm, xt, yt, channels_last):
    opt = bench_pgd_at.make_optimizer(tm)
    return lambda: torch_step(tm, opt, xt, yt, spec.dtype)

  timers = bench_pgd_at.train_step_timers(step, fresh_state, batch, m, spec, x, y, notes, torch_run)
  return harness.Workload(f"shared{spec.steps}_at", spec, check, timers,
                          lambda: bench_pgd_at.step_flops(m, spec, batch), notes)


if __name__ == "__main__":
  harness.main(build, steps=None)
