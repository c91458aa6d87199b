"""PGD-k with 4 random restarts, the strongest kept per example: JAX (vmapped and looped) vs PyTorch.

The JAX side is `advjax.attacks.attack` with `restarts=4`, timed twice: with
`parallel_restarts=True` (one `jax.vmap` over the restart keys, so each step
is one 4x larger batch) and `parallel_restarts=False` (the default: a loop
over restarts inside the compiled program). The PyTorch side is the usual
loop: four PGD runs from four random starts, keeping per example the run
whose final cross-entropy is highest (restart 0 first; a later restart
replaces it only if strictly stronger, the library's rule).

Equal starts: the PyTorch runs begin from the same random points, drawn with
the library's own key derivation (`fold_in` of the attack key per restart)
and threat model, so both sides compute the same thing and the check can
compare images. Checked: the adversarial images agree except for pixels
where a near-zero gradient's sign flips (as bench_pgd).

Run: `python -m benchmarks.bench_pgd_restarts [--models convnet --steps 10]`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax import attacks
from advjax.attacks import pgd as pgd_lib
from advjax.attacks import threat
from benchmarks import bench_pgd, harness

RESTARTS = 4
EPS, STEP_SIZE = bench_pgd.EPS, bench_pgd.STEP_SIZE


def attack_config(steps: int, parallel: bool) -> attacks.AttackConfig:
  return attacks.AttackConfig(eps=EPS, step_size=STEP_SIZE, num_steps=steps, init="uniform",
                              restarts=RESTARTS, parallel_restarts=parallel)


def library_starts(x: jax.Array, rng: jax.Array, cfg: attacks.AttackConfig) -> list[np.ndarray]:
  """The starting perturbations of each restart, as `advjax.attacks.attack` draws them."""
  sizes = pgd_lib.resolve_sizes(cfg)
  ball = pgd_lib.threat_model(cfg, sizes)
  _, k_restarts = jax.random.split(rng)
  starts = []
  for r in range(cfg.restarts):
    k_init, _ = jax.random.split(jax.random.fold_in(k_restarts, r))
    starts.append(np.asarray(ball.project(ball.init(k_init, x.shape, "uniform", dtype=x.dtype), x)))
  return starts


def torch_pgd_restarts(tm, x, y, starts, *, eps: float, alpha: float, steps: int, dtype: str = "float32"):
  """PGD from each start (torch tensors like x), the highest final loss kept per example."""
  best, best_loss = None, None
  for delta0 in starts:
    x_adv = bench_pgd.torch_pgd_from(tm, x, y, x + delta0, eps=eps, alpha=alpha, steps=steps, dtype=dtype)
    with torch.no_grad(), harness.autocast(dtype):
      loss = F.cross_entropy(harness.loss_logits(tm(x_adv)), y, reduction="none")
    if best is None:
      best, best_loss = x_adv, loss
    else:
      take = loss > best_loss
      best = torch.where(take.view(-1, *([1] * (x.ndim - 1))), x_adv, best)
      best_loss = torch.where(take, loss, best_loss)
  return best


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  rng = jax.random.key(0)
  parallel_cfg, loop_cfg = attack_config(spec.steps, True), attack_config(spec.steps, False)
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  eps, alpha = threat.to_unit(EPS), threat.to_unit(STEP_SIZE)
  starts = library_starts(xj, rng, parallel_cfg)
  notes: list[str] = []
  variants = harness.torch_variants(m.torch_model.eval(), dataclasses.replace(spec, torch_compile=False), notes)

  def torch_starts(channels_last: bool):
    out = []
    for s in starts:
      t, _ = harness.to_torch(s, y, channels_last)
      out.append(t)
    return out

  def check():
    x_par = np.asarray(attacks.attack(logits_fn, xj, yj, rng, parallel_cfg))
    x_loop = np.asarray(attacks.attack(logits_fn, xj, yj, rng, loop_cfg))
    xt, yt = harness.to_torch(x, y)
    x_torch = harness.to_nhwc(torch_pgd_restarts(m.torch_model, xt, yt, torch_starts(False), eps=eps,
                                                 alpha=alpha, steps=spec.steps, dtype=spec.dtype))
    reference = harness.to_nhwc(torch_pgd_restarts(
        harness.float64_twin(m.torch_model).eval(), xt.double(), yt, [s.double() for s in torch_starts(False)],
        eps=eps, alpha=alpha, steps=spec.steps))
    flipped = bench_pgd.MAX_FLIPPED[spec.dtype]
    return {
        "pixels differing (vmap vs loop)": harness.assert_images_close("vmap vs loop restarts", x_par, x_loop,
                                                                        alpha, flipped),
        "pixels differing (torch)": harness.assert_images_close_or_as_accurate(
            "x_adv vs torch restarts", x_par, x_torch, reference, alpha, flipped),
    }

  timers = {
      "jax": lambda: jax.block_until_ready(attacks.attack(logits_fn, xj, yj, rng, loop_cfg)),
      "jax restarts vmapped": lambda: jax.block_until_ready(attacks.attack(logits_fn, xj, yj, rng, parallel_cfg)),
  }
  for name, (tm, channels_last) in variants.items():
    xt, yt = harness.to_torch(x, y, channels_last)
    st = torch_starts(channels_last)

    def run(tm=tm, xt=xt, yt=yt, st=st):
      torch_pgd_restarts(tm, xt, yt, st, eps=eps, alpha=alpha, steps=spec.steps, dtype=spec.dtype)
      harness.torch_sync()

    timers[name] = run
  flops = lambda: RESTARTS * spec.steps * bench_pgd.input_grad_flops(m.model, m.variables, xj, yj)
  return harness.Workload(f"pgd{spec.steps}x{RESTARTS}_restarts", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build)
