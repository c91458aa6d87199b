"""One per-pixel PGD-k adversarial-training step of the digit-canvas FCN, JAX vs PyTorch on identical weights.

The model is the segmentation default on the embedded digit canvases
(64x64x1, 11 classes: background and the ten digits): the 'convnet_dense'
backbone (the universality convnet read before each max pool, at 1/1, 1/2
and 1/4 of the canvas) with the FCN-8s head 'fcn8s_fc:128,128' (`SEG_HEADS`;
advjax/models/fcn.py). Its PyTorch twin is `torch_models.ConvNetDenseFCN8s`,
whose parameters carry the Flax variables' names; `twin_state_dict` moves
the weights. Both sides run without dropout: fc6/fc7's 0.5 would draw
different masks in each framework (the convnet rows drop it for the same reason).

Weights: the Flax initialisation, then `TRAIN_STEPS` Adam steps of per-pixel
cross-entropy on the training canvases in JAX, then copied into the twin.
FCN-8s zero-initialises its score layers (Long et al., sec. 4.2), so an
untrained model has zero logits and zero input gradients: there would be
nothing to attack.

The step: per-pixel PGD-k in eval mode (L-inf, eps 76.5 = 0.3 on the [0, 1]
scale, step 2.5 eps / k, from the clean image so both sides start
identically, as `bench_pgd_at`), ascending the sum over images of each
image's cross-entropy averaged over its labelled pixels (label -1 ignored;
`advjax.tasks.Segmentation`); then one training-mode pass on the adversarial
canvases with the batch mean of the same per-image losses, and an SGD-momentum
update. The JAX side is the library's 'pgd_at' objective with the
segmentation task, compiled by `bench_pgd_at.jax_train_step`.

Checked: after one step from the same state the parameter updates and the
BatchNorm running statistics agree (`bench_pgd_at.check_update`, its
tolerance and float64 reference). `benchmarks/bench_dag.py` times DAG on the
same matched models.

Run: `python -m benchmarks.bench_seg [--models convnet_dense --batch 32 --steps 5]`.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from advjax import bridge, tasks
from advjax.attacks import threat
from advjax.models import create_model
from benchmarks import bench_pgd_at, harness, torch_models

EPS = 76.5  # 0-255 pixel units: 0.3, the usual MNIST radius
STEP_FACTOR = 2.5  # step size = STEP_FACTOR * EPS / k (Madry et al.)
# The dense head of each benchmarked backbone; the tiny one keeps tests fast.
SEG_HEADS = {"convnet_dense": "fcn8s_fc:128,128", "convnet_dense_tiny": "fcn8s_fc:16,16"}
# Adam steps (batch TRAIN_BATCH, configs/seg_digits.py's learning rate) before the weights are copied.
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 40, 32, 2e-3


def seg_model(spec: harness.Spec):
  """The Flax FCN of `spec.model` with `SEG_HEADS`' head, without dropout."""
  _, _, classes = spec.shape
  model = create_model(spec.model, num_classes=classes, mean=harness.DIGIT_MEAN, std=harness.DIGIT_STD,
                       dtype=spec.dtype, head=SEG_HEADS[spec.model])
  return model.clone(head=model.head.clone(fc_dropout=0.0))


def canvases(split: str, count: int | None) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` (None: all) embedded digit canvases of a split: images [n, 64, 64, 1], labels [n, 64, 64]."""
  from advjax.data import embedded
  data = embedded.mnist_seg_canvases(split)
  count = len(data.image) if count is None else count
  if count > len(data.image):
    raise ValueError(f"{count} {split} canvases: only {len(data.image)} embedded")
  return np.array(data.image[:count]), np.array(data.label[:count])


@functools.lru_cache(maxsize=None)
def trained_variables(model_name: str, seed: int) -> dict:
  """Float32 Flax variables of the FCN after `TRAIN_STEPS` Adam steps on the training canvases (numpy)."""
  spec = harness.Spec(model=model_name, batch=TRAIN_BATCH, seed=seed)
  model = seg_model(spec)
  size, channels, classes = spec.shape
  task = tasks.Segmentation(classes)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, size, size, channels)))
  tx = optax.adam(TRAIN_LR)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss(params):
      logits, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.mean(task.loss(logits, y)), updates

    grads, updates = jax.grad(loss, has_aux=True)(variables["params"])
    deltas, opt_state = tx.update(grads, opt_state)
    return {**variables, **updates, "params": optax.apply_updates(variables["params"], deltas)}, opt_state

  x, y = canvases("train", None)
  rng = np.random.default_rng(seed)
  opt_state = tx.init(variables["params"])
  for _ in range(TRAIN_STEPS):
    idx = np.sort(rng.choice(len(x), TRAIN_BATCH, replace=False))
    variables, opt_state = step(variables, opt_state, x[idx], y[idx])
  return jax.device_get(variables)


def twin_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """Flax variables of the FCN (or a tree like them) as `ConvNetDenseFCN8s` state-dict arrays.

  Every layer but the transposed convolutions is the convnet bridge's
  re-layout; those store [in, out, 4, 4] in PyTorch, where the bridge would
  write a convolution's [out, in, 4, 4] (the same shape here, since both
  are the number of classes, so only the numbers would tell).
  """
  variables = jax.device_get(variables)
  state = bridge.flax_to_torch(variables, "convnet")
  for name, leaf in variables["params"].items():
    if "upscore" in name:
      state[f"{name}.weight"] = np.ascontiguousarray(np.asarray(leaf["kernel"], np.float32).transpose(2, 3, 0, 1))
  return state


def twin_as_torch(variables: dict) -> dict[str, np.ndarray]:
  """`twin_state_dict` without the BatchNorm step counters: the trees the checks compare."""
  return {k: v for k, v in twin_state_dict(variables).items() if not k.endswith("num_batches_tracked")}


def matched_models(spec: harness.Spec) -> harness.Matched:
  """The briefly trained Flax FCN and its PyTorch twin holding the same weights (twin in eval mode)."""
  _, channels, classes = spec.shape
  model = seg_model(spec)
  variables = jax.device_put(trained_variables(spec.model, spec.seed), jax.devices()[0])
  tm = torch_models.ConvNetDenseFCN8s(
      num_classes=classes, in_channels=channels, widths=tuple(model.backbone.widths),
      fc_widths=tuple(model.head.fc_widths), fc_kernel=model.head.fc_kernel, fc_dropout=0.0,
      activation=model.backbone.activation, mean=harness.DIGIT_MEAN, std=harness.DIGIT_STD)
  tm.load_state_dict({k: torch.tensor(v) for k, v in twin_state_dict(variables).items()})
  return harness.Matched(model, variables, tm.eval().to(harness.torch_device()))


def sizes(steps: int) -> tuple[float, float]:
  """(eps, step size) in 0-255 units for PGD-k."""
  return EPS, STEP_FACTOR * EPS / steps


def per_image_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
  """[batch] cross-entropy averaged over each image's labelled pixels (-1 ignored), as the Segmentation task.

  Args:
    logits: [batch, classes, H, W].
    y: [batch, H, W] int64 labels, -1 ignored.
  """
  per_pixel = F.cross_entropy(logits, y, reduction="none", ignore_index=-1)
  valid = (y >= 0).to(per_pixel.dtype)
  return per_pixel.sum((1, 2)) / valid.sum((1, 2)).clamp(min=1.0)


def torch_seg_pgd(tm, x, y, *, eps: float, alpha: float, steps: int, dtype: str = "float32"):
  """Per-pixel L-inf PGD from the clean image; eps and alpha on the [0, 1] scale."""
  x_adv = x.clone()
  for _ in range(steps):
    x_adv.requires_grad_(True)
    with harness.autocast(dtype):
      loss = per_image_loss(harness.loss_logits(tm(x_adv)), y).sum()
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv = x_adv.detach() + alpha * grad.sign()
    x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
  return x_adv


def torch_seg_pgd_at_step(tm, opt, x, y, *, steps: int, dtype: str) -> None:
  """Attack in eval mode, then one SGD step on the adversarial canvases in training mode."""
  eps, step_size = sizes(steps)
  tm.eval()
  x_adv = torch_seg_pgd(tm, x, y, eps=threat.to_unit(eps), alpha=threat.to_unit(step_size), steps=steps,
                        dtype=dtype)
  tm.train()
  opt.zero_grad(set_to_none=True)
  with harness.autocast(dtype):
    loss = per_image_loss(harness.loss_logits(tm(x_adv)), y).mean()
  loss.backward()
  opt.step()


def build(spec: harness.Spec) -> harness.Workload:
  m = matched_models(spec)
  x, y = canvases("test", spec.batch)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  eps, step_size = sizes(spec.steps)

  def configure(config):
    config.model.head = SEG_HEADS[spec.model]
    config.adversarial.attack.eps = eps
    config.adversarial.attack.step_size = step_size

  step, fresh_state, _, _ = bench_pgd_at.jax_train_step(m, spec, "pgd_at", configure=configure,
                                                         task=tasks.Segmentation(spec.shape[2]))
  notes = [f"per-pixel PGD-{spec.steps}, eps {EPS:g}/255, step {step_size:g}/255, from the clean image "
           f"(init='zero') so both sides start identically; {TRAIN_STEPS} Adam steps of training first; "
           "fc6/fc7 dropout off on both sides"]
  tol = 10 * harness.TOLERANCE[spec.dtype]

  def check():
    before = harness.torch_params(m.torch_model)
    state, _ = step(fresh_state(), batch)
    tm = copy.deepcopy(m.torch_model)
    xt, yt = harness.to_torch(x, y)
    torch_seg_pgd_at_step(tm, bench_pgd_at.make_optimizer(tm), xt, yt, steps=spec.steps, dtype=spec.dtype)
    ref = harness.float64_twin(m.torch_model)
    torch_seg_pgd_at_step(ref, bench_pgd_at.make_optimizer(ref), xt.double(), yt, steps=spec.steps,
                          dtype="float32")
    return bench_pgd_at.check_update(spec, before, state, tm, tol, ref, as_torch=twin_as_torch)

  def torch_run(tm, xt, yt, channels_last):
    del channels_last
    opt = bench_pgd_at.make_optimizer(tm)
    return lambda: torch_seg_pgd_at_step(tm, opt, xt, yt, steps=spec.steps, dtype=spec.dtype)

  # to_torch casts labels to int64 and keeps the maps' shape, so it serves label maps as well.
  timers = bench_pgd_at.train_step_timers(step, fresh_state, batch, m, spec, x, y, notes, torch_run)
  return harness.Workload(f"seg_pgd{spec.steps}_at", spec, check, timers,
                          lambda: bench_pgd_at.step_flops(m, spec, batch), notes)


if __name__ == "__main__":
  harness.main(build, default_models=("convnet_dense",), steps=None)
