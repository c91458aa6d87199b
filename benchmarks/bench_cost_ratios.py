"""What each training objective costs relative to another, measured in one run (JAX only).

The methods promise cost ratios that do not need PyTorch to check:
  - a shared-adversarial-training step (heap adversary, sharedness s) costs
    the same as a PGD adversarial-training step with the same attack steps
    (shared-AT paper, section 4: one forward/backward per attack step);
  - a low-cost UAT step (algorithm 4) costs about a natural step, an
    alternating UAT step (algorithm 3) about two;
  - an AdvProp step with a k-step attacker costs (k + 2) / (k + 1) of a k-step
    PGD adversarial-training step (one extra clean pass).
Every step is the library's own, the registered objective's `train_step` built from an
experiment config and compiled by `compile_train_step` with the state donated;
the variants are timed round-robin by `harness.time_interleaved`.

Run: `python -m benchmarks.bench_cost_ratios [--model resnet20] [--batch 16] [--steps 3]`.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from advjax import config as config_lib, models, parallel, tasks
from advjax.training import objectives, optim, steps
from advjax.training.objectives import advprop
from advjax.training.train_state import create_train_state
from benchmarks import harness

# (variant, objective, config changes); eps 6 makes AdvProp's attacker k = eps + 1 = 7 steps
# unless --steps overrides the attack length of every adversarial variant.
VARIANTS = ("natural", "pgd_at", "shared_at", "uat_simultaneous", "uat_alternating", "advprop")
# (numerator, denominator, promised bound as a function of k).
PROMISES = (
    ("shared_at", "pgd_at", lambda k: 1.05, "heap step / PGD step <= 1.05"),
    ("uat_simultaneous", "natural", lambda k: 1.10, "low-cost UAT step / natural step <= 1.10"),
    ("uat_alternating", "natural", lambda k: 2.2, "alternating UAT step / natural step <= 2.2"),
    ("advprop", "pgd_at", lambda k: (k + 2) / (k + 1) + 0.05, "AdvProp step / PGD step <= (k+2)/(k+1) + 0.05"),
)


def variant_config(variant: str, model_name: str, batch: int, num_steps: int, heap_size: int,
                   bn_mode: str = "eval"):
  """The experiment config of one variant: CIFAR-shaped data, SGD, the same attacker.

  Every adversarial variant attacks for `num_steps` steps with BatchNorm in
  `bn_mode` (AdvProp through its auxiliary set), so the ratios compare the
  same attack work.
  """
  c = config_lib.base_config()
  c.model.name = model_name
  c.batch_size = batch
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.objective = "erm" if variant == "natural" else variant
  eps = 8.0
  block = c.advprop if variant == "advprop" else c.adversarial
  if variant == "advprop":
    advprop.configure_attacker(c, eps, "pgd")
  block.attack.eps = eps
  block.attack.step_size = 2.0
  block.attack.num_steps = num_steps
  c.adversarial.heap_size = heap_size if variant == "shared_at" else 1
  block.bn_mode = bn_mode
  c.uat.eps = eps
  return c


def build_step(config, image_shape, num_classes, mesh):
  """(compiled step, fresh-state factory) for one config."""
  model = models.from_config(config.model, num_classes=num_classes, mean=(0.5,), std=(0.5,))
  tx, schedule = optim.make_optimizer(config, steps_per_epoch=100, total_steps=1000)
  objective = objectives.build(config, model=model, task=tasks.Classification(num_classes), schedule=schedule,
                               total_steps=1000, steps_per_epoch=100)

  def init(rng):
    return create_train_state(model, tx, rng, image_shape, objective.init_extras(image_shape),
                              aux_bn_sets=objective.bn_sets())

  fresh = lambda: jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  step = steps.compile_train_step(objective.train_step, fresh(), mesh)
  return step, fresh


def step_timer(config, image_shape, num_classes, mesh, batch):
  """A zero-argument call running one synchronised training step of `config` on `batch`
  (the state carried from call to call, as donated steps require)."""
  config_lib.validate(config, num_devices=1)
  step, fresh = build_step(config, image_shape, num_classes, mesh)
  box = {"state": fresh()}

  def run():
    box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready(metrics)

  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet20")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=3, help="attack steps k of every adversarial variant")
  p.add_argument("--heap_size", type=int, default=8)
  p.add_argument("--bn-mode", default="eval", choices=("eval", "batch"),
                 help="BatchNorm during every attack ('eval': running statistics)")
  p.add_argument("--budget", type=float, default=60.0, help="seconds of timed calls in all")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help="comma-separated subset of " + ", ".join(VARIANTS) + "; ratios need both sides")
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    p.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

  mesh = parallel.make_mesh(jax.devices()[:1])
  image_shape, num_classes = (32, 32, 3), 10
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": rng.uniform(size=(args.batch, *image_shape)).astype(np.float32),
      "label": rng.integers(0, num_classes, size=(args.batch,)).astype(np.int32)}, mesh)
  timers = {}
  for variant in variants:
    config = variant_config(variant, args.model, args.batch, args.steps, args.heap_size, args.bn_mode)
    timers[variant] = step_timer(config, image_shape, num_classes, mesh, batch)
  timings = harness.time_interleaved(timers, budget_s=args.budget)
  print(f"\n{args.model}, batch {args.batch}, attack steps k = {args.steps}, s = {args.heap_size}, "
        f"attack BN {args.bn_mode}, {jax.devices()[0].platform}")
  print("| variant | median ms | IQR ms | reps |\n|---|---|---|---|")
  for name, t in timings.items():
    print(f"| {name} | {1e3 * t.median_s:.1f} | {1e3 * t.iqr_s:.1f} | {t.reps} |")
  print("\n| ratio | measured | promised | holds |\n|---|---|---|---|")
  for num, den, bound, text in PROMISES:
    if num not in timings or den not in timings:
      continue
    ratio = timings[num].median_s / timings[den].median_s
    print(f"| {text} | {ratio:.3f} | {bound(args.steps):.3f} | {'yes' if ratio <= bound(args.steps) else 'no'} |")
  if {"natural", "pgd_at", "advprop"} <= set(timings):
    print_pass_model({k: t.median_s for k, t in timings.items()}, args.steps)


def print_pass_model(median_s: dict[str, float], k: int) -> None:
  """What an attack step costs relative to a training step, and the AdvProp ratio that implies.

  The (k+2)/(k+1) promise counts an attack step (forward + input gradient) as
  one training step (forward + input and weight gradients + update). With an
  attack step costing a = (PGD step - natural step) / (k natural step), the
  extra clean pass of AdvProp predicts (k a + 2) / (k a + 1).
  """
  a = (median_s["pgd_at"] - median_s["natural"]) / (k * median_s["natural"])
  print(f"\nattack step / natural step a = {a:.3f}; AdvProp / PGD predicted by counting passes "
        f"(k a + 2)/(k a + 1) = {(k * a + 2) / (k * a + 1):.3f}")


if __name__ == "__main__":
  main()
