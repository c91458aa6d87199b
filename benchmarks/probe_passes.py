"""Where a JAX/PyTorch gap comes from: ResNet-20 passes and single convolutions, timed side by side.

A diagnostic, not a workload of `make bench`. On the same weights (BatchNorm
removed on both sides, so only convolutions, ReLUs and adds remain) it times
the forward pass, forward + input gradient (an attack step) and forward +
weight gradients; then single 3x3 convolutions of each ResNet-20 stage:
forward, input gradient and kernel gradient. Every pair is timed interleaved
in one run; the JAX programs are compiled as advjax compiles its own
(`advjax.cpu.compilation.jit`, XLA's multi-threaded convolutions on a CPU).

Run: `python -m benchmarks.probe_passes [--batch 8] [--budget 30]`.
"""

from __future__ import annotations

import argparse
import copy

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

from advjax import models
from advjax.cpu import compilation
from advjax.attacks import losses
from benchmarks import harness

NHWC = ("NHWC", "HWIO", "NHWC")
# (spatial size, channels) of ResNet-20's three stages (64-128-256 filters).
STAGES = ((32, 64), (16, 128), (8, 256))


def without_batchnorm(tm: torch.nn.Module) -> torch.nn.Module:
  """A copy of `tm` with every BatchNorm2d replaced by the identity."""
  tm = copy.deepcopy(tm)
  for module in list(tm.modules()):
    for name, child in list(module.named_children()):
      if isinstance(child, torch.nn.BatchNorm2d):
        setattr(module, name, torch.nn.Identity())
  return tm


def pass_timers(spec: harness.Spec) -> dict:
  """Forward, forward + input gradient and forward + weight gradients of the norm-free model."""
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  net = models.create_model(spec.model, num_classes=spec.shape[2], norm="none", mean=harness.MEAN,
                            std=harness.STD)
  params = net.init(jax.random.key(0), xj[:1])["params"]

  def loss(p, images):
    return jnp.mean(losses.cross_entropy(net.apply({"params": p}, images), yj))

  fwd, dx, dw = (compilation.jit(f) for f in (loss, jax.grad(loss, argnums=1), jax.grad(loss)))
  tm = without_batchnorm(m.torch_model).to(memory_format=torch.channels_last).train()
  xt, yt = harness.to_torch(x, y, channels_last=True)

  def torch_forward():
    with torch.no_grad():
      return F.cross_entropy(tm(xt), yt)

  def torch_input_grad():
    tm.requires_grad_(False)
    images = xt.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(tm(images), yt), images)

  def torch_weight_grads():
    tm.requires_grad_(True)
    tm.zero_grad(set_to_none=True)
    F.cross_entropy(tm(xt), yt).backward()

  ready = jax.block_until_ready
  return {"forward | jax": lambda: ready(fwd(params, xj)), "forward | torch": torch_forward,
          "forward + input grad | jax": lambda: ready(dx(params, xj)), "forward + input grad | torch": torch_input_grad,
          "forward + weight grads | jax": lambda: ready(dw(params, xj)),
          "forward + weight grads | torch": torch_weight_grads}


def conv_timers(batch: int) -> dict:
  """Single 3x3 stride-1 convolutions of each stage: forward, input gradient and kernel gradient."""
  rng = np.random.default_rng(0)
  timers = {}
  for size, c in STAGES:
    x = jnp.asarray(rng.uniform(size=(batch, size, size, c)), jnp.float32)
    k = jnp.asarray(0.05 * rng.normal(size=(3, 3, c, c)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, size, size, c)), jnp.float32)

    def conv(x_in, kernel):
      return lax.conv_general_dilated(x_in, kernel, (1, 1), "SAME", dimension_numbers=NHWC)

    fwd = compilation.jit(conv)
    dx = compilation.jit(lambda x_in, kernel, cot: jax.vjp(lambda v: conv(v, kernel), x_in)[1](cot)[0])
    dk = compilation.jit(lambda x_in, kernel, cot: jax.vjp(lambda w: conv(x_in, w), kernel)[1](cot)[0])
    nchw = lambda a, perm: torch.from_numpy(np.asarray(a).transpose(perm).copy()).contiguous(  # noqa: E731
        memory_format=torch.channels_last)
    xt, kt, gt = nchw(x, (0, 3, 1, 2)), nchw(k, (3, 2, 0, 1)), nchw(g, (0, 3, 1, 2))
    name = f"conv {c}->{c} at {size}x{size}"
    # The pairs compute the same thing: both gradients agree to float32 rounding before they are timed.
    for what, ours, theirs, perm in (
        ("input grad", dx(x, k, g), torch.nn.grad.conv2d_input(xt.shape, kt, gt, padding=1), (0, 2, 3, 1)),
        ("kernel grad", dk(x, k, g), torch.nn.grad.conv2d_weight(xt, kt.shape, gt, padding=1), (2, 3, 1, 0))):
      ours, theirs = np.asarray(ours), theirs.numpy().transpose(perm)
      error = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
      if error > 1e-4:
        raise harness.AgreementError(f"{name} {what}: JAX and PyTorch differ by {error:.2g} of the largest value")
    timers.update({
        f"{name} forward | jax": lambda fwd=fwd, x=x, k=k: jax.block_until_ready(fwd(x, k)),
        f"{name} forward | torch": lambda xt=xt, kt=kt: F.conv2d(xt, kt, padding=1),
        f"{name} input grad | jax": lambda dx=dx, x=x, k=k, g=g: jax.block_until_ready(dx(x, k, g)),
        f"{name} input grad | torch": lambda xt=xt, kt=kt, gt=gt: torch.nn.grad.conv2d_input(
            xt.shape, kt, gt, padding=1),
        f"{name} kernel grad | jax": lambda dk=dk, x=x, k=k, g=g: jax.block_until_ready(dk(x, k, g)),
        f"{name} kernel grad | torch": lambda xt=xt, kt=kt, gt=gt: torch.nn.grad.conv2d_weight(
            xt, kt.shape, gt, padding=1)})
  return timers


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per group")
  args = p.parse_args(argv)
  spec = harness.Spec(model=args.model, batch=args.batch, torch_compile=False)
  print(f"{args.model}, batch {args.batch}, float32, {jax.devices()[0].platform}; BatchNorm removed on both sides")
  print("| what | JAX ms | PyTorch ms | JAX / PyTorch |\n|---|---|---|---|")
  for timers in (pass_timers(spec), conv_timers(args.batch)):
    timings = harness.time_interleaved(timers, budget_s=args.budget, log=lambda *_: None)
    for name in [n for n in timers if n.endswith("| jax")]:
      what = name[: -len(" | jax")]
      j, t = timings[name].median_s, timings[f"{what} | torch"].median_s
      print(f"| {what} | {1e3 * j:.2f} | {1e3 * t:.2f} | {j / t:.2f} |")


if __name__ == "__main__":
  main()
