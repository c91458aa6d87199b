"""DAG (Xie thesis, Alg. 1) on the digit-canvas FCN, JAX vs PyTorch on identical weights: iterations per second.

The model and its PyTorch twin are `bench_seg`'s (the briefly trained
'convnet_dense' + FCN-8s), in eval mode (running BatchNorm statistics), on
the first test canvases. DAG runs with the thesis' gamma = 0.5 (0-255 units)
and every labelled pixel a target (`BACKGROUND`); M0 (`num_steps`) is the row's `steps`, far below
the thesis' 200 so that a timed call takes seconds. Both sides get the same
adversarial labels (the library's derangements, drawn once).

The JAX side is `advjax.attacks.dag.dag`: every image in one `lax.while_loop`
that runs until all have stopped, each image's update masked once it has.
PyTorch runs the same algorithm two ways: batched (`torch_dag`, the JAX
loop's structure: one forward/backward of the whole batch per iteration,
stopped images frozen), eager NCHW and channels_last; and image by image
('torch eager per image', the plain reading of Algorithm 1 that
tests/attacks/test_dag.py's reference writes), which does no work for an
image after it stops.

The throughput is DAG iterations per second: the iterations the images
take, summed over the batch (the updates Algorithm 1 makes), over the wall
time of a call. The batched loops compute the whole batch until the last
image stops, so they do the most work when images stop at different times.

Checked: equal iteration counts per image, and perturbations within float
tolerance or, where float32 rounding moves pixels at a decision boundary in
or out of the active set, JAX as close to a float64 PyTorch run as PyTorch
is (`harness.assert_trees_close_or_as_accurate`), for both PyTorch forms.

Run: `python -m benchmarks.bench_dag [--models convnet_dense --batch 32 --steps 10]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from advjax import attacks
from advjax.attacks import dag as dag_lib
from advjax.attacks import threat
from benchmarks import bench_pgd, bench_seg, harness

GAMMA = 0.5  # 0-255 pixel units, the thesis' step length
# Every labelled pixel is a target (DAGConfig.background_class=-1). The thesis spares the
# background, but after bench_seg's brief training the FCN predicts few digit pixels right, so
# with the background spared the active set is (nearly) empty on the clean canvases.
BACKGROUND = -1


def torch_dag(tm, x, y, targets, *, gamma: float, max_iter: int, background: int):
  """Algorithm 1 on a batch, each image stopping on its own, as `dag_lib.dag` does.

  Args:
    tm: the twin in eval mode.
    x: [batch, C, H, W] clean images in [0, 1].
    y: [batch, H, W] int64 labels, -1 ignored.
    targets: [batch, H, W] int64 adversarial labels.
    gamma: step length on the [0, 1] scale.
    max_iter: M0.
    background: label whose pixels are not targets (-1: none).

  Returns:
    (x_adv [batch, C, H, W], iterations [batch] int64 numpy).
  """
  attackable = (y >= 0) & (y != background) if background >= 0 else y >= 0
  classes_axis = 1
  done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
  iterations = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
  x_m = x.clone()
  direction = None
  for _ in range(max_iter):
    if bool(done.all()):
      break
    x_m.requires_grad_(True)
    logits = tm(x_m)
    if direction is None:
      classes = logits.shape[classes_axis]
      onehot = [torch.nn.functional.one_hot(labels.clamp(min=0), classes).permute(0, 3, 1, 2)
                for labels in (targets, y)]
      direction = (onehot[0] - onehot[1]).to(logits.dtype)
    active = (logits.argmax(classes_axis) == y) & attackable
    (r_m,) = torch.autograd.grad((logits * direction * active[:, None]).sum(), x_m)
    r_inf = r_m.abs().amax(dim=(1, 2, 3))
    move = ~done & (active.sum((1, 2)) > 0) & (r_inf > 0)
    step = gamma * r_m / torch.where(r_inf > 0, r_inf, torch.ones_like(r_inf)).view(-1, 1, 1, 1)
    x_m = torch.where(move.view(-1, 1, 1, 1), torch.clamp(x_m.detach() + step, 0.0, 1.0), x_m.detach())
    iterations += move
    done |= ~move
  return x_m.detach(), iterations.cpu().numpy()


def torch_dag_per_image(tm, x, y, targets, **kw):
  """`torch_dag` image by image: Algorithm 1 as written, a loop over the images."""
  runs = [torch_dag(tm, x[b:b + 1], y[b:b + 1], targets[b:b + 1], **kw) for b in range(x.shape[0])]
  return torch.cat([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def build(spec: harness.Spec) -> harness.Workload:
  m = bench_seg.matched_models(spec)
  x, y = bench_seg.canvases("test", spec.batch)
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  classes = spec.shape[2]
  cfg = dag_lib.DAGConfig(gamma=GAMMA, num_steps=spec.steps, background_class=BACKGROUND)
  logits_fn = attacks.make_logits_fn(m.model, m.variables, "eval")
  rng = jax.random.key(spec.seed)
  targets = np.asarray(dag_lib.adversarial_labels(yj, dag_lib.random_derangements(rng, spec.batch, classes)))
  targets_j = jnp.asarray(targets)
  kw = dict(gamma=threat.to_unit(GAMMA), max_iter=spec.steps, background=BACKGROUND)
  notes = [f"gamma {GAMMA:g}/255, M0 = {spec.steps} (the thesis' is 200), every pixel a target (background too); "
           f"the FCN of seg_pgd_at ({bench_seg.TRAIN_STEPS} Adam steps), eval mode"]
  box = {}

  def check():
    result = dag_lib.dag(logits_fn, xj, yj, rng, cfg, targets_j)
    iterations = np.asarray(result.iterations)
    xt, yt = harness.to_torch(x, y)
    tt = torch.from_numpy(targets.astype(np.int64)).to(harness.torch_device())
    x_ref, _ = torch_dag(harness.float64_twin(m.torch_model).eval(), xt.double(), yt, tt, **kw)
    reference = {"r": harness.to_nhwc(x_ref).astype(np.float64) - x}
    errors = {}
    for what, run in (("batched", torch_dag), ("per image", torch_dag_per_image)):
      x_adv, torch_iterations = run(m.torch_model, xt, yt, tt, **kw)
      if not np.array_equal(iterations, torch_iterations):
        raise harness.AgreementError(f"DAG iterations ({what}): JAX {iterations.tolist()} vs PyTorch "
                                     f"{torch_iterations.tolist()}")
      # Pixels at a decision boundary (where DAG drives them) enter or leave the active set by
      # rounding, so float32 paths drift apart; JAX must then be as close to float64 as PyTorch.
      errors[f"perturbation ({what})"] = harness.assert_trees_close_or_as_accurate(
          f"DAG perturbation ({what})", {"r": np.asarray(result.perturbation)},
          {"r": harness.to_nhwc(x_adv) - x}, reference, harness.TOLERANCE[spec.dtype])
    box["iterations"] = int(iterations.sum())
    clean_active = int(jnp.sum(dag_lib.targets_mask(yj, BACKGROUND) & (jnp.argmax(logits_fn(xj), -1) == yj)))
    notes.append(f"DAG iterations per image: min {iterations.min()}, max {iterations.max()}, total "
                 f"{iterations.sum()}; active set {clean_active} pixels on the clean canvases, "
                 f"{int(np.asarray(result.remaining).sum())} on the adversarial ones")
    return errors

  timers = {"jax": lambda: jax.block_until_ready(dag_lib.dag(logits_fn, xj, yj, rng, cfg, targets_j))}
  for name, (tm, channels_last) in harness.torch_variants(m.torch_model, spec, notes).items():
    xt, yt = harness.to_torch(x, y, channels_last)
    tt = torch.from_numpy(targets.astype(np.int64)).to(harness.torch_device())

    def run(tm=tm, xt=xt, yt=yt, tt=tt):
      torch_dag(tm, xt, yt, tt, **kw)
      harness.torch_sync()

    timers[name] = run
  xt, yt = harness.to_torch(x, y)
  tt = torch.from_numpy(targets.astype(np.int64)).to(harness.torch_device())

  def run_per_image():
    torch_dag_per_image(m.torch_model, xt, yt, tt, **kw)
    harness.torch_sync()

  timers["torch eager per image"] = run_per_image

  def flops():
    # One iteration of one image: a forward pass and an input gradient (the vector-Jacobian
    # product of DAG's direction costs what cross-entropy's does). Counted for the iterations made.
    per_batch = bench_pgd.input_grad_flops(m.model, m.variables, xj, yj)
    return box.get("iterations", 0) / spec.batch * per_batch

  return harness.Workload(f"dag{spec.steps}", spec, check, timers, flops, notes,
                          work=lambda: ("DAG iterations", box["iterations"]))


if __name__ == "__main__":
  harness.main(build, default_models=("convnet_dense",))
