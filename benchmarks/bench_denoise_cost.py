"""What the denoising blocks cost in an adversarial-training step (thesis ch. 4), JAX only.

Each variant is the library's PGD adversarial-training step (`pgd_at`, the
attack on running BatchNorm statistics as in sec. 4.5) of one backbone with
a denoising block after each stage, or none ('baseline'); the dot-product
non-local block is timed in both computation orders (`gram`: X (X^T X) / N,
`affinity`: (X X^T) X / N). The report gives each variant's median step,
its extra time over the baseline, the share of the step its blocks take,
(t - t_baseline) / t, and that extra per block. Timed round-robin by
`harness.time_interleaved`, so every variant sees the same machine load.

Run: `python -m benchmarks.bench_denoise_cost [--model resnet14_small --image-size 28 --channels 1]
      [--batch 64] [--steps 3] [--budget 60]`.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from advjax import models, parallel
from benchmarks import bench_cost_ratios, harness

# variant -> insert_block ('' = no block).
VARIANTS = {
    "baseline": "", "null": "denoise:null", "nonlocal_gaussian": "denoise:nonlocal_gaussian",
    "nonlocal_dot_gram": "denoise:nonlocal_dot,gram", "nonlocal_dot_affinity": "denoise:nonlocal_dot,affinity",
    "bilateral_gaussian": "denoise:bilateral_gaussian", "mean": "denoise:mean", "median": "denoise:median",
}


def variant_config(insert_block: str, model_name: str, batch: int, num_steps: int):
  """The PGD adversarial-training config of one variant (eps 16, as the thesis' ImageNet recipe)."""
  c = bench_cost_ratios.variant_config("pgd_at", model_name, batch, num_steps, heap_size=1, bn_mode="eval")
  c.adversarial.attack.eps, c.adversarial.attack.step_size = 16.0, 1.6
  c.model.insert_block = insert_block
  c.model.insert_after = "stages"
  return c


def count_blocks(config, image_shape, num_classes) -> int:
  """Denoising blocks in the model of `config` (from its abstract parameters)."""
  if not config.model.insert_block:
    return 0
  model = models.from_config(config.model, num_classes=num_classes, mean=(0.5,), std=(0.5,))
  x = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return sum(1 for name in variables["batch_stats"] if name.endswith("_denoise"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet14_small")
  p.add_argument("--image-size", type=int, default=28)
  p.add_argument("--channels", type=int, default=1)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=3, help="attack steps of the PGD adversarial-training step")
  p.add_argument("--budget", type=float, default=60.0, help="seconds of timed calls in all")
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown or "baseline" not in variants:
    p.error(f"--variants: needs 'baseline' and names from {', '.join(VARIANTS)}; unknown: {', '.join(unknown)}")

  mesh = parallel.make_mesh(jax.devices()[:1])
  image_shape, num_classes = (args.image_size, args.image_size, args.channels), 10
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": rng.uniform(size=(args.batch, *image_shape)).astype(np.float32),
      "label": rng.integers(0, num_classes, size=(args.batch,)).astype(np.int32)}, mesh)
  timers, blocks = {}, {}
  for variant in variants:
    config = variant_config(VARIANTS[variant], args.model, args.batch, args.steps)
    timers[variant] = bench_cost_ratios.step_timer(config, image_shape, num_classes, mesh, batch)
    blocks[variant] = count_blocks(config, image_shape, num_classes)
  timings = harness.time_interleaved(timers, budget_s=args.budget)
  print(f"\n{args.model} at {args.image_size}x{args.image_size}x{args.channels}, batch {args.batch}, "
        f"PGD-{args.steps} adversarial-training step, blocks after each stage, {jax.devices()[0].platform}")
  print("| variant | blocks | median ms | IQR ms | reps | extra ms | share of the step | extra ms per block |")
  print("|---|---|---|---|---|---|---|---|")
  for name, row in costs(timings, blocks).items():
    t = timings[name]
    per_block = "" if row["per_block_s"] is None else f"{1e3 * row['per_block_s']:.1f}"
    print(f"| {name} | {blocks[name]} | {1e3 * t.median_s:.1f} | {1e3 * t.iqr_s:.1f} | {t.reps} | "
          f"{1e3 * row['extra_s']:.1f} | {row['share']:.1%} | {per_block} |")


def costs(timings: dict[str, harness.Timing], blocks: dict[str, int]) -> dict[str, dict]:
  """Per variant: extra seconds over 'baseline', their share of the variant's step
  ((t - t_baseline) / t) and the extra per block (None without blocks)."""
  base = timings["baseline"].median_s
  out = {}
  for name, t in timings.items():
    extra = t.median_s - base
    out[name] = {"extra_s": extra, "share": extra / t.median_s,
                 "per_block_s": extra / blocks[name] if blocks[name] else None}
  return out


if __name__ == "__main__":
  main()
