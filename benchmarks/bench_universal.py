"""The stochastic universal adversary (S-PGD, shared adversarial training sec. 5.2), JAX vs PyTorch.

One perturbation delta [H, W, C] is fitted to a stream of mini-batches by
stochastic projected sign ascent, as `advjax.attacks.universal` defines it
with the shared-AT evaluation preset (`shared_at_eval_config`): from
delta_0 = 0, iteration k takes the gradient g of the mean thresholded loss
min(CE(clip(x + delta, 0, 1), y), kappa), kappa = -log 0.2, over mini-batch
k mod B, and sets delta <- clip(delta + alpha_k sign(g), -eps, eps) with the
annealed step alpha_k = beta eps gamma^k / sum_{j<K} gamma^j (beta = 4,
gamma = 0.975, K the number of iterations). Here eps = 76.5/255 (0.3, the
usual MNIST radius) and the adversary makes 10 epochs over 1,000 training
digits in mini-batches of 100, K = 100 iterations (at another `--batch` the
mini-batch is 100 * batch / 128 and the digits ten mini-batches, so K stays
100; `--quick`'s batch 8 gives 60 digits in mini-batches of 6).

The JAX side is the library's driver `universal_perturbation`: a Python loop
that dispatches one jitted `universal_step` per iteration (compiled once for
all K). The PyTorch side, `torch_universal` below, is the same algorithm in
plain eager PyTorch: same batch order, same init, same step rule and
schedule, same projection. Its box clip is `harness.clip_like_jax`, written
with `torch.maximum` and `torch.minimum` because those, like `jnp.clip`, pass
half the gradient at the kink (x + delta exactly 0 or 1), whereas
`torch.clamp` passes all of it; from delta = 0 on MNIST, where about 80% of
the pixels are exactly 0, that convention weighs each example's gradient
differently at the first step and so changes the sign of some of delta's
entries. The model runs in eval mode on both sides.

Checked, three ways. (1) After two epochs (the first 20 iterations: every
mini-batch twice, and the clip to the eps ball binding on ~30% of the
pixels) the two deltas agree, all but `bench_pgd.MAX_FLIPPED` of the pixels
within 1e-5, or, failing that, as in (2); the JAX side is the driver's own
loop body, `universal_step`, called 20 times.
(2) The final deltas agree in the same sense, or, where more pixels
differ, JAX is as close to a float64 PyTorch run of the algorithm as float32
PyTorch is (`harness.assert_images_close_or_as_accurate`). (3) The universal
fooling rates of the two final deltas (the fraction of the fitted digits
whose prediction the perturbation changes; JAX's measured with
`advjax.evaluation.universal_robustness.evaluate_universal`) agree within one point
(two digits when a smoke run fits fewer than 200).

Why (1) as well: sign ascent amplifies rounding. About 1% of the entries
of the delta gradient are not zero but below 1e-6 of the largest, so their
sign is decided by rounding; a flipped entry moves one pixel by 2 alpha_k,
which perturbs every later gradient, and the flips compound. The rounding
that decides is the cross-entropy's (a confidently classified digit's
softmax-minus-one-hot sits at float32 resolution): a float64 network with a
float32 loss reproduces the float32 PyTorch delta on every pixel. On the
convnet at batch 100 the JAX and float32 PyTorch deltas are identical for
the first ~30 iterations and differ on ~9% of the pixels after 100, while
float32 and all-float64 PyTorch part after ~6 and differ on ~38% in the end
(fooling rates 0.767, 0.767 and 0.754); on the tiny convnet the float32
sides part after ~5 iterations (so there (1) falls back on float64 too).
Hence the final-delta comparison falls back on the float64 reference and is
a weak test, and on the convnet the early one is the sharp one (a
`torch.clamp` twin is 5% of the pixels off after the first iteration and
54% after 20).

Run: `python -m benchmarks.bench_universal [--models convnet --torch-compile off --budget 20]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from advjax import attacks
from advjax.attacks import threat
from advjax.attacks import universal
from advjax.evaluation import universal_robustness as universal_eval
from benchmarks import bench_pgd, harness

EPS = 76.5  # 0-255 pixel units: 0.3 on [0, 1].
EPOCHS = 10
BATCHES_PER_EPOCH = 10
# The check compares the deltas after this many epochs too, before rounding flips compound.
EARLY_EPOCHS = 2
MINI_BATCH = 100  # At spec.batch 128; scaled with the batch.
# The fooling rates of the two deltas may differ by this much (one point).
MAX_RATE_GAP = 0.01


def mini_batch_size(batch: int) -> int:
  return max(2, round(MINI_BATCH * batch / 128))


def universal_config() -> universal.UniversalConfig:
  return universal.shared_at_eval_config(eps=EPS, num_steps=EPOCHS * BATCHES_PER_EPOCH)


def torch_universal(tm, xs, ys, *, eps: float, steps: int, beta: float, gamma: float, kappa: float,
                    dtype: str = "float32", stop: int | None = None):
  """Stochastic projected sign ascent of one perturbation [1, C, H, W] over the batches `xs`, `ys`.

  eps on the [0, 1] scale; batch k mod len(xs) feeds iteration k; annealed
  steps beta eps gamma^k / sum_{j<steps} gamma^j; loss min(CE, kappa)
  averaged over the batch. `stop` ends the loop after that many of the
  `steps` iterations (the check's early comparison).
  """
  total = sum(gamma ** j for j in range(steps))
  delta = torch.zeros((1,) + tuple(xs[0].shape[1:]), dtype=xs[0].dtype, device=xs[0].device)
  for k in range(steps if stop is None else stop):
    x, y = xs[k % len(xs)], ys[k % len(ys)]
    delta.requires_grad_(True)
    x_in = harness.clip_like_jax(x + delta, 0.0, 1.0)
    with harness.autocast(dtype):
      ce = F.cross_entropy(harness.loss_logits(tm(x_in)), y, reduction="none")
    (grad,) = torch.autograd.grad(ce.clamp(max=kappa).mean(), delta)
    alpha = beta * eps * gamma ** k / total
    delta = torch.clamp(delta.detach() + alpha * grad.sign(), -eps, eps)
  return delta


@torch.no_grad()
def torch_fooling_rate(tm, xs, delta) -> float:
  changed = count = 0
  for x in xs:
    clean = tm(x).argmax(-1)
    adv = tm(torch.clamp(x + delta, 0.0, 1.0)).argmax(-1)
    changed += int((clean != adv).sum())
    count += len(x)
  return changed / count


def build(spec: harness.Spec) -> harness.Workload:
  if spec.model not in harness.CONVNETS:
    raise ValueError(f"bench_universal fits digits; {spec.model!r} is not one of {harness.CONVNETS}")
  m = harness.matched_models(spec)
  size = mini_batch_size(spec.batch)
  x, y = harness.digits("train", size * BATCHES_PER_EPOCH)
  image_shape = x.shape[1:]
  batches = [{"image": jnp.asarray(x[i:i + size]), "label": jnp.asarray(y[i:i + size])}
             for i in range(0, len(x), size)]
  cfg = universal_config()
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  rng = jax.random.key(0)  # Unused by the zero init; both sides start at delta = 0.
  eps = threat.to_unit(EPS)
  twin_args = dict(eps=eps, steps=cfg.num_steps, beta=cfg.beta, gamma=cfg.gamma, kappa=cfg.kappa)
  notes = [f"eps {EPS}/255, K = {cfg.num_steps} iterations = {EPOCHS} epochs over {len(x)} training "
           f"digits in mini-batches of {size}; sign rule, annealed steps (beta {cfg.beta}, "
           f"gamma {cfg.gamma}), loss min(CE, {cfg.kappa:.3f}); per-call time is the whole fit "
           "(img/s divides only spec.batch by it)"]
  variants = harness.torch_variants(m.torch_model.eval(), spec, notes)

  def torch_batches(channels_last=False, double=False):
    pairs = [harness.to_torch(x[i:i + size], y[i:i + size], channels_last) for i in range(0, len(x), size)]
    return [xt.double() if double else xt for xt, _ in pairs], [yt for _, yt in pairs]

  def jax_fit():
    return universal.universal_perturbation(logits_fn, batches, rng, cfg, image_shape)

  def jax_first(n):
    """The first n iterations, by the library's `universal_step` (the driver's loop body)."""
    radius = jnp.float32(cfg.eps)
    delta, state = universal.init_universal(rng, cfg, image_shape, radius)
    for k in range(n):
      delta, state = universal.universal_step(logits_fn, delta, state, batches[k % len(batches)],
                                              jnp.int32(k), cfg, eps=radius)
    return np.asarray(delta)[None]

  def compare(what, jax_delta, torch_delta, stop=None):
    flipped = bench_pgd.MAX_FLIPPED[spec.dtype]
    torch_delta = harness.to_nhwc(torch_delta)
    try:
      return harness.assert_images_close(what, jax_delta, torch_delta, eps, flipped)
    except harness.AgreementError:
      # Rounding flips compounded over the iterations: judge both against float64 (costly, so only here).
      x64, y64 = torch_batches(double=True)
      reference = torch_universal(harness.float64_twin(m.torch_model).eval(), x64, y64, stop=stop,
                                  **twin_args)
      return harness.assert_images_close_or_as_accurate(what, jax_delta, torch_delta,
                                                        harness.to_nhwc(reference), eps, flipped)

  def check():
    xs, ys = torch_batches()
    # The first epochs (each mini-batch seen, the eps ball binding): before sign flips of
    # rounding-level gradient entries compound.
    n = EARLY_EPOCHS * BATCHES_PER_EPOCH
    early = compare(f"delta after {n} iterations", jax_first(n),
                    torch_universal(m.torch_model, xs, ys, dtype=spec.dtype, stop=n, **twin_args), stop=n)
    delta = np.asarray(jax_fit())[None]
    delta_t = torch_universal(m.torch_model, xs, ys, dtype=spec.dtype, **twin_args)
    final = compare("final delta", delta, delta_t)
    jax_rate = universal_eval.evaluate_universal(logits_fn, batches, jnp.asarray(delta[0]))["fooling_ratio"]
    torch_rate = torch_fooling_rate(m.torch_model, xs, delta_t)
    # One point, or two digits of a smoke run's few digits.
    if not abs(jax_rate - torch_rate) <= max(MAX_RATE_GAP, 2 / len(x)) + 1e-9:
      raise harness.AgreementError(f"fooling rate: JAX {jax_rate:.3f} vs PyTorch {torch_rate:.3f}")
    return {
        f"delta pixels differing ({n} iterations)": early,
        "delta pixels differing (final)": final,
        "linf": float(np.max(np.abs(delta))) - eps,  # <= 0: inside the ball
        "fooling rate (jax)": jax_rate,
        "fooling rate (torch)": torch_rate,
    }

  timers = {"jax": lambda: jax.block_until_ready(jax_fit())}
  for name, (tm, channels_last) in variants.items():
    xs, ys = torch_batches(channels_last)

    def run(tm=tm, xs=xs, ys=ys):
      torch_universal(tm, xs, ys, dtype=spec.dtype, **twin_args)
      harness.torch_sync()

    timers[name] = run

  def flops():
    # One iteration is one forward and input gradient on a mini-batch; XLA sees one iteration.
    step = lambda d: universal.batch_gradient(logits_fn, d, batches[0], cfg)  # noqa: E731
    return cfg.num_steps * harness.step_flops(step, jnp.zeros(image_shape, jnp.float32))

  return harness.Workload(f"universal{cfg.num_steps}", spec, check, timers, flops, notes)


if __name__ == "__main__":
  harness.main(build, default_models=("convnet",))
