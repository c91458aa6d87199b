"""Forward + backward of a training-mode classifier, JAX vs PyTorch on identical weights.

One step: logits in training mode (BatchNorm with batch statistics, running
statistics updated), mean cross-entropy, gradient with respect to every
parameter. No optimiser update, so this is the raw cost of the network, the
unit every other workload is built from.

Checked: the loss, the logits and every parameter gradient agree.

Run: `python -m benchmarks.bench_fwd_bwd [--models resnet20 --batch 32 --dtype bfloat16]`.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import torch.nn.functional as F

from advjax.cpu import compilation
from advjax.attacks import losses
from benchmarks import harness


def jax_fwd_bwd(model):
  """`(params, batch_stats, x, y) -> ((loss, (batch_stats, logits)), grads)`, to be jitted."""

  def loss_fn(params, batch_stats, x, y):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
    return jnp.mean(losses.cross_entropy(logits, y)), (updates["batch_stats"], logits)

  return jax.value_and_grad(loss_fn, has_aux=True)


def torch_fwd_bwd(tm, x, y, dtype):
  """One PyTorch step; gradients land in `.grad` (zeroed first, as a training loop would)."""
  tm.zero_grad(set_to_none=True)
  with harness.autocast(dtype):
    logits = tm(x)
    loss = F.cross_entropy(harness.loss_logits(logits), y)
  loss.backward()
  return loss, logits


def float64_reference(torch_model, x, y):
  """Logits and gradients in float64, the reference where float32 or bfloat16 itself is inaccurate."""
  tm = harness.float64_twin(torch_model).train()
  xt, yt = harness.to_torch(x, y)
  _, logits = torch_fwd_bwd(tm, xt.double(), yt, "float32")
  return logits.detach().cpu().numpy(), harness.torch_grads(tm)


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  params, batch_stats = m.variables["params"], m.variables["batch_stats"]
  step = compilation.jit(jax_fwd_bwd(m.model))  # advjax's CPU convolution path, as its train steps
  tol = harness.TOLERANCE[spec.dtype]
  notes: list[str] = []

  def check():
    (loss, (_, logits)), grads = step(params, batch_stats, xj, yj)
    tm = copy.deepcopy(m.torch_model).train()
    xt, yt = harness.to_torch(x, y)
    t_loss, t_logits = torch_fwd_bwd(tm, xt, yt, spec.dtype)
    reference_logits, reference_grads = float64_reference(m.torch_model, x, y)
    return {
        "loss": harness.assert_close("loss", loss, t_loss.item(), tol),
        # A 50-layer network in bfloat16 differs from its autocast twin by more than the
        # tolerance (5.8% on ResNet-50's logits on an H200); JAX passes if it is as close
        # to float64 as PyTorch is.
        "logits": harness.assert_trees_close_or_as_accurate(
            "logits", {"logits": np.asarray(logits, np.float32)},
            {"logits": t_logits.detach().float().cpu().numpy()}, {"logits": reference_logits}, tol),
        "grads": harness.assert_trees_close_or_as_accurate(
            "grad", harness.flax_as_torch({"params": grads}, spec.model), harness.torch_grads(tm),
            reference_grads,
            # Gradients through batch statistics of few examples are noisier than logits.
            5 * tol),
    }

  timers = {"jax": lambda: jax.block_until_ready(step(params, batch_stats, xj, yj))}
  for name, (tm, channels_last) in harness.torch_variants(m.torch_model, spec, notes).items():
    tm.train()
    xt, yt = harness.to_torch(x, y, channels_last)

    def run(tm=tm, xt=xt, yt=yt):
      torch_fwd_bwd(tm, xt, yt, spec.dtype)
      harness.torch_sync()

    timers[name] = run
  flops = lambda: harness.step_flops(jax_fwd_bwd(m.model), params, batch_stats, xj, yj)
  return harness.Workload("fwd_bwd", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build)
