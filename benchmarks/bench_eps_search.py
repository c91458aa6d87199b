"""The eps_adv(delta = 0.5) search (shared adversarial training sec. 5.2), JAX vs PyTorch.

eps_adv(delta) is the smallest L-inf radius at which the per-example attack
misclassifies a fraction delta of the examples. Both sides find it by the
same b = 8 step bisection on [0, 255] (0-255 pixel units): probe the
midpoint of the bracket, keep the lower half if the misclassification rate
reached delta (the probe is the new best) and the upper half otherwise;
the result is the smallest successful probe, 255 if none succeeded, 0 if the
clean error rate already reaches delta. Each probe runs the library's
eps_adv attack (`advjax.evaluation.robustness.eps_adv_config`) with K = 10
steps (`--steps`): L-inf sign steps from delta = 0 (no random start, so both
sides are deterministic) with the annealed step alpha_k = beta eps gamma^k /
sum_{j<K} gamma^j (beta = 4, gamma = 0.975), each step projected onto the eps
ball and the box [0, 1]. The data are the first `--batch` test digits as
one batch: 256 in `benchmarks.run`'s suite row (the default batch of a
standalone run is 128, hence `--batch 256` below), 8 in a `--quick` run; the
model is the convnet trained briefly on the embedded digits, in eval mode on
both sides. The img/s column counts the searched digits per second of the
whole search.

Timed:
  jax                `advjax.evaluation.robustness.eps_adv_search`, what the
                     'eps_adv' evaluator runs: one clean pass, then per probe
                     one jitted attack-and-score call per batch and one host
                     read of the rate (the bisection branches on it), the
                     radius a traced argument so all probes share one compile.
  jax per-example    `robustness.per_example_eps` (the evaluator's
                     `per_example` option): every example bisects its own
                     bracket, the b probes of a batch one compiled
                     `fori_loop` with a per-example radius; eps_adv(delta) is
                     the delta-quantile of the per-example minima
                     (`eps_at_rate`). Same attack, same b, same [0, 255].
  torch eager (and channels_last)
                     `torch_eps_adv` below: the same bisection in plain
                     Python around an eager PyTorch twin of the probe attack.

How the two JAX searches relate: both probe only the dyadic points
255 j / 2^b. An example's success is independent of the other examples
(eval-mode BatchNorm, a sum of per-example losses), so if it is also
monotone in eps, the global rate at a probe is the fraction of examples
whose minimum is at most that probe, and the delta-quantile of the minima is
exactly the smallest dyadic point whose rate reaches delta, which is what
the global bisection returns. They can differ only where K = 10 annealed
steps succeed at some eps and fail at a larger one on some example (or
where float rounding, a per-example radius array against a scalar one,
decides a borderline example). The check reports the per-example side's
rate at the global eps_adv (the fraction of minima at or below it), which
equals the global rate there when success is monotone.

Checked: JAX's and PyTorch's eps_adv agree exactly, or, where the two
bisections part, the rates at the probe where they part differ by at most
`MAX_RATE_GAP_EXAMPLES` examples and straddle delta (a rate sitting at
delta, where one float32 rounding decides), so the results differ by less
than that probe's bracket. The rates at the final bracket's ends of both
sides are reported.

Run: `python -m benchmarks.bench_eps_search [--models convnet --batch 256 --budget 20]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax import attacks
from advjax import tasks as tasks_lib
from advjax.evaluation import robustness
from benchmarks import bench_pgd, harness

TARGET_RATE = 0.5  # delta
SEARCH_STEPS = 8  # b
LOWER, UPPER = 0.0, 255.0  # 0-255 pixel units
# Where the bisections part, the rates there may differ by this many examples.
MAX_RATE_GAP_EXAMPLES = 2


def torch_annealed_pgd(tm, x, y, *, eps: float, steps: int, beta: float, gamma: float,
                       dtype: str = "float32"):
  """L-inf PGD from the clean image with annealed steps beta eps gamma^k / sum_j gamma^j; eps on [0, 1]."""
  total = sum(gamma ** j for j in range(steps))
  x_adv = x.clone()
  for k in range(steps):
    x_adv.requires_grad_(True)
    with harness.autocast(dtype):
      loss = F.cross_entropy(harness.loss_logits(tm(x_adv)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv = x_adv.detach() + beta * eps * gamma ** k / total * grad.sign()
    x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
  return x_adv


def torch_eps_adv(tm, xs, ys, *, target_rate: float, search_steps: int, steps: int, beta: float,
                  gamma: float, dtype: str = "float32"):
  """b-step bisection on [LOWER, UPPER] for the smallest eps (0-255) whose PGD error rate reaches the target.

  Returns:
    (eps_adv, [(eps, rate) of every probe, the clean rate first as eps 0]).
  """
  count = sum(len(y) for y in ys)

  def error_rate(eps):
    correct = 0
    for x, y in zip(xs, ys):
      x_adv = x if eps == 0 else torch_annealed_pgd(tm, x, y, eps=eps / 255.0, steps=steps, beta=beta,
                                                     gamma=gamma, dtype=dtype)
      with torch.no_grad(), harness.autocast(dtype):
        correct += int((tm(x_adv).argmax(-1) == y).sum())
    return 1.0 - correct / count  # As advjax rounds it: 1 - accuracy.

  trace = [(0.0, error_rate(0.0))]
  if trace[0][1] >= target_rate:
    return 0.0, trace
  lo, hi, best = LOWER, UPPER, None
  for _ in range(search_steps):
    eps = 0.5 * (lo + hi)
    rate = error_rate(eps)
    trace.append((eps, rate))
    if rate >= target_rate:
      best, hi = eps, eps
    else:
      lo = eps
  return (UPPER if best is None else best), trace


def build(spec: harness.Spec) -> harness.Workload:
  if spec.model not in harness.CONVNETS:
    raise ValueError(f"bench_eps_search attacks digits; {spec.model!r} is not one of {harness.CONVNETS}")
  m = harness.matched_models(spec)
  x, y = harness.digits("test", spec.batch)
  n = len(x)
  batches = [{"image": jnp.asarray(x), "label": jnp.asarray(y), "mask": jnp.ones((n,), jnp.float32)}]
  cfg = robustness.eps_adv_config(num_steps=spec.steps)
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  task = tasks_lib.for_labels(batches[0]["label"], spec.shape[2])  # As the evaluator passes ctx.task.
  rng = jax.random.key(0)  # Unused: zero init, no input diversity.
  twin_args = dict(target_rate=TARGET_RATE, search_steps=SEARCH_STEPS, steps=cfg.num_steps, beta=cfg.beta,
                   gamma=cfg.gamma)
  notes = [f"eps_adv({TARGET_RATE}) on {n} test digits in one batch: b = {SEARCH_STEPS} "
           f"bisection probes on [{LOWER:g}, {UPPER:g}], each PGD-{cfg.num_steps} from zero with annealed "
           f"steps (beta {cfg.beta}, gamma {cfg.gamma}); per-call time is the whole search"]
  variants = harness.torch_variants(m.torch_model.eval(), spec, notes)

  def jax_global():
    return robustness.eps_adv_search(logits_fn, batches, rng, cfg, target_rate=TARGET_RATE,
                                     num_steps=SEARCH_STEPS, lower=LOWER, upper=UPPER, task=task)

  def jax_per_example():
    minima, found = robustness.per_example_eps(logits_fn, batches, rng, cfg, num_steps=SEARCH_STEPS,
                                               lower=LOWER, upper=UPPER, task=task)
    return robustness.eps_at_rate(minima, found, TARGET_RATE, UPPER)[0], minima, found

  def torch_batches(channels_last=False):
    xt, yt = harness.to_torch(x, y, channels_last)
    return [xt], [yt]

  def jax_rate(eps):
    metrics = robustness.attacked_metrics(logits_fn, batches, cfg, rng, task=task, eps=eps)
    return task.error_rate(metrics["adversarial"])

  def check():
    result = jax_global()
    xs, ys = torch_batches()
    torch_eps, trace = torch_eps_adv(m.torch_model, xs, ys, dtype=spec.dtype, **twin_args)
    if result.eps != torch_eps:
      # Replay the torch probes in JAX until the paths part; that probe must sit at delta.
      for eps, torch_rate in trace[1:]:
        rate = jax_rate(eps)
        if (rate >= TARGET_RATE) != (torch_rate >= TARGET_RATE):
          if abs(rate - torch_rate) * n > MAX_RATE_GAP_EXAMPLES + 1e-9:
            raise harness.AgreementError(
                f"eps_adv: JAX {result.eps} vs PyTorch {torch_eps}; at the probe eps {eps} where the "
                f"bisections part, rates {rate:.4f} vs {torch_rate:.4f}")
          break
      else:
        raise harness.AgreementError(f"eps_adv: JAX {result.eps} vs PyTorch {torch_eps} on the same path")
    torch_rates = dict(trace)
    torch_lower = max((e for e, r in trace if r < TARGET_RATE), default=None)
    per_example_eps, minima, found = jax_per_example()
    return {
        "eps_adv (jax)": result.eps,
        "eps_adv (torch)": torch_eps,
        "eps_adv (jax per-example)": per_example_eps,
        "rate at eps_adv (jax)": result.rate,
        "rate at eps_adv (torch)": torch_rates.get(torch_eps, float("nan")),
        "rate at eps_adv (jax per-example minima)": float(np.mean(found & (minima <= result.eps))),
        "lower bound (jax)": result.lower_bound,
        "rate at lower bound (jax)": result.rate_at_lower_bound,
        "rate at lower bound (torch)": torch_rates.get(torch_lower, float("nan")),
        "clean error rate": result.clean_rate,
    }

  timers = {
      "jax": lambda: jax_global(),  # Reads each probe's rate to the host: synchronous.
      "jax per-example": lambda: jax_per_example(),  # Fetches the minima: synchronous.
  }
  for name, (tm, channels_last) in variants.items():
    xs, ys = torch_batches(channels_last)

    def run(tm=tm, xs=xs, ys=ys):
      torch_eps_adv(tm, xs, ys, dtype=spec.dtype, **twin_args)
      harness.torch_sync()

    timers[name] = run

  def flops():
    # The global search: per probe and batch K attack steps (forward and input gradient) and
    # two forwards (clean and attacked), plus one clean forward per batch; XLA sees one step.
    xj, yj = batches[0]["image"], batches[0]["label"]
    step = bench_pgd.input_grad_flops(m.model, m.variables, xj, yj)
    forward = harness.step_flops(logits_fn, xj)
    return len(batches) * (SEARCH_STEPS * (cfg.num_steps * step + 2 * forward) + forward)

  return harness.Workload(f"eps_adv_search_b{SEARCH_STEPS}_k{spec.steps}", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build, default_models=("convnet",))
