"""Shared machinery of the JAX-vs-PyTorch benchmarks: same weights, same work, fair clocks.

Each `bench_*.py` script describes one workload with a `build(spec) -> Workload`
function. A `Workload` holds

* `check()`: runs the step once in JAX and once in PyTorch from identical
  weights (moved with `advjax.bridge`) and identical inputs, and raises
  `AgreementError` unless the outputs (logits, gradients, adversarial images,
  updated parameters) agree within float tolerance. A benchmark whose two
  sides compute different things measures nothing, so `run_workload` always
  checks before it times.
* `timers`: zero-argument callables, one per variant ('jax', 'torch eager',
  'torch eager channels_last', 'torch.compile', 'torchattacks', ...), each
  running one step to completion (`block_until_ready` in JAX, a CUDA
  synchronisation in PyTorch).
* `flops`: floating-point operations of one step, from XLA's cost analysis
  of the JAX program (the same arithmetic as the PyTorch side, which the
  check establishes).

Timing (`time_interleaved`) warms every variant up, then runs the variants
round-robin in a rotating order, rep after rep, so that a change in machine
load (other processes, thermal state) hits all variants alike; it reports
the median and the inter-quartile range of the per-call wall time. The
machine's peak is a large matmul timed in both frameworks in the same run
(float32 on a CPU; the workload's dtype on an accelerator, where "fraction of
peak" is then its MFU against the attainable matmul rate), so "fraction of
peak" is comparable across variants.

Adding a workload is one script with `build(spec)` plus one line in
`benchmarks/run.py`'s `WORKLOADS`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import torch

from advjax import bridge
from advjax.models import create_model
from benchmarks import torch_models

# (image side, channels, classes) of the shapes each model is benchmarked at.
SHAPES = {
    "convnet": (28, 1, 10),
    "convnet_tiny": (28, 1, 10),
    "resnet20": (32, 3, 10),
    "resnet50": (224, 3, 1000),
    "resnet20_tiny": (8, 3, 5),
    "resnet50_tiny": (32, 3, 7),
    # The digit-canvas FCN (benchmarks/bench_seg.py): 64x64 canvases, 11 classes per pixel.
    "convnet_dense": (64, 1, 11),
    "convnet_dense_tiny": (64, 1, 11),
}
# Default batch per (model, platform): the GPU batch is the research setting;
# the CPU batch is small enough that a 2-core machine finishes a run in minutes.
DEFAULT_BATCH = {
    ("convnet", "gpu"): 128, ("convnet", "cpu"): 128,
    ("resnet20", "gpu"): 128, ("resnet20", "cpu"): 64,
    ("resnet50", "gpu"): 64, ("resnet50", "cpu"): 8,
    ("convnet_tiny", "gpu"): 8, ("convnet_tiny", "cpu"): 8,
    ("resnet20_tiny", "gpu"): 4, ("resnet20_tiny", "cpu"): 4,
    ("resnet50_tiny", "gpu"): 4, ("resnet50_tiny", "cpu"): 4,
    ("convnet_dense", "gpu"): 32, ("convnet_dense", "cpu"): 32,
    ("convnet_dense_tiny", "gpu"): 4, ("convnet_dense_tiny", "cpu"): 4,
}
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)
# The convnet is `make train`'s model on the embedded digits (configs/default.py's
# normalisation), benchmarked without dropout: dropout masks come from each
# framework's own generator, so outputs could not be compared, and the masks cost
# one multiply per activation.
CONVNETS = ("convnet", "convnet_tiny")
DIGIT_MEAN, DIGIT_STD = (0.5,), (0.5,)
CONVNET_OVERRIDES = {"conv_dropout": 0.0, "head_dropout": 0.0}
# Steps of plain SGD that train the torch convnet on the embedded training digits
# before its weights are copied, so attacks run against a model that classifies.
CONVNET_TRAIN_STEPS = 60
# Relative-norm tolerance of the agreement checks. Float32 sides differ only
# by summation order; bfloat16 compute carries ~3 significant digits.
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}


class AgreementError(AssertionError):
  """The JAX and PyTorch sides of a benchmark computed different things."""


# --------------------------------------------------------------------- devices


def platform_name() -> str:
  """'gpu' if JAX runs on an accelerator, else 'cpu'."""
  return "cpu" if jax.default_backend() == "cpu" else "gpu"


def torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def autocast(dtype: str):
  """PyTorch's mixed precision matching `create_model(dtype=...)`: bf16 compute, f32 params."""
  device = torch_device().type
  return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def machine_info() -> dict[str, Any]:
  """CPU model, cores, load, accelerators and library versions, for the report."""
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import flax
  import jaxlib
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
      "jax_devices": [str(d.device_kind) for d in jax.devices()],
      "torch_device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
      "torch_threads": torch.get_num_threads(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
      "torch_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: active)"),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "torch": torch.__version__,
  }


# ---------------------------------------------------------------- the problem


@dataclasses.dataclass(frozen=True)
class Spec:
  """One benchmark problem: which model, at what batch and precision.

  Attributes:
    model: a key of `SHAPES` (registry name in both frameworks).
    batch: examples per step.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    steps: attack steps (PGD-k) where the workload has an attack.
    torch_compile: also time a `torch.compile`d model.
    seed: weights and data seed.
  """
  model: str
  batch: int
  dtype: str = "float32"
  steps: int = 10
  torch_compile: bool = True
  seed: int = 0

  @property
  def shape(self) -> tuple[int, int, int]:
    return SHAPES[self.model]


@dataclasses.dataclass
class Matched:
  """A Flax model and its PyTorch twin holding the same weights."""
  model: Any
  variables: dict
  torch_model: torch.nn.Module


def matched_models(spec: Spec) -> Matched:
  """Builds a PyTorch model at random init and moves its weights into the Flax twin.

  A few training-mode passes make the BatchNorm running statistics
  non-trivial, so eval-mode agreement exercises them.
  """
  size, channels, classes = spec.shape
  torch.manual_seed(spec.seed)
  if spec.model in CONVNETS:
    mean, std, extra = DIGIT_MEAN, DIGIT_STD, CONVNET_OVERRIDES
    tm = torch_models.create_torch_model(spec.model, num_classes=classes, in_channels=channels,
                                         mean=mean, std=std, image_size=size, conv_dropout=0.0,
                                         head_dropout=0.0)
    _train_on_digits(tm, spec.seed)
  else:
    mean, std, extra = MEAN, STD, {}
    tm = torch_models.create_torch_model(spec.model, num_classes=classes, in_channels=channels,
                                         mean=mean, std=std)
    tm.train()
    with torch.no_grad():
      for _ in range(2):
        tm(torch.rand(2, channels, size, size))
  tm.eval()
  model = create_model(spec.model, num_classes=classes, mean=mean, std=std, dtype=spec.dtype, **extra)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, channels)))
  variables = bridge.torch_to_flax(tm.state_dict(), spec.model, template)
  variables = jax.device_put(variables, jax.devices()[0])
  return Matched(model, variables, tm.to(torch_device()))


def _train_on_digits(tm: torch.nn.Module, seed: int) -> None:
  """A few SGD steps of the torch convnet on the embedded training digits (batch 128)."""
  from advjax.data import embedded
  x, y, _, _ = embedded.mnist_arrays()
  rng = np.random.default_rng(seed)
  opt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9)
  tm.train()
  for _ in range(CONVNET_TRAIN_STEPS):
    idx = rng.choice(len(x), 128, replace=False)
    xt, yt = to_torch(x[idx], y[idx])
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(tm(xt.cpu()), yt.cpu()).backward()
    opt.step()
  tm.zero_grad(set_to_none=True)


def digits(split: str, count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` embedded MNIST digits of 'train' or 'test' from `offset`: images [n, 28, 28, 1], labels [n]."""
  from advjax.data import embedded
  x_train, y_train, x_test, y_test = embedded.mnist_arrays()
  x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
  if offset + count > len(x):
    raise ValueError(f"{count} {split} digits from {offset}: only {len(x)} embedded")
  return np.array(x[offset:offset + count]), np.array(y[offset:offset + count])


def make_batch(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """Images [batch, H, W, C] in [0, 1] (float32) and labels [batch] (int32).

  The convnets get embedded test digits; the ResNets uniform noise with random labels.
  """
  if spec.model in CONVNETS:
    return digits("test", spec.batch)
  size, channels, classes = spec.shape
  rng = np.random.default_rng(spec.seed + 1)
  x = rng.uniform(size=(spec.batch, size, size, channels)).astype(np.float32)
  y = rng.integers(0, classes, size=spec.batch).astype(np.int32)
  return x, y


def to_torch(x: np.ndarray, y: np.ndarray, channels_last: bool = False):
  """NHWC numpy images and labels -> NCHW torch tensors on the torch device."""
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch_device())
  if channels_last:
    xt = xt.contiguous(memory_format=torch.channels_last)
  return xt, torch.from_numpy(y.astype(np.int64)).to(torch_device())


def to_nhwc(xt: torch.Tensor) -> np.ndarray:
  return xt.detach().float().cpu().numpy().transpose(0, 2, 3, 1)


def clip_like_jax(xt: torch.Tensor, low: float, high: float) -> torch.Tensor:
  """clip(xt, low, high) with `jnp.clip`'s gradient, for a PyTorch twin to differentiate through.

  Where an entry sits exactly on a bound, `jnp.clip` (a `jnp.maximum` then a
  `jnp.minimum`) passes half the gradient, like `torch.maximum` and
  `torch.minimum`, which split it between tied operands; `torch.clamp`
  passes all of it. On the digits most pixels are exactly 0, so x + delta
  lies on the box's edge from delta = 0 on, and the two conventions weigh
  each example's gradient differently.
  """
  low_t = torch.tensor(low, dtype=xt.dtype, device=xt.device)
  high_t = torch.tensor(high, dtype=xt.dtype, device=xt.device)
  return torch.minimum(torch.maximum(xt, low_t), high_t)


def error_line(e: Exception) -> str:
  """An exception as one short line for a report: its type and the first line of its message."""
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


# The variant name of `torch.compile`d PyTorch: timed when it runs, never the eager reference.
TORCH_COMPILE = "torch.compile"


def torch_variants(tm: torch.nn.Module, spec: Spec, notes: list[str]) -> dict[str, tuple[torch.nn.Module, bool]]:
  """The PyTorch executions to time: name -> (module, channels_last input).

  Eager NCHW (PyTorch's default), eager channels_last (oneDNN/cuDNN often
  prefer NHWC), and, if `spec.torch_compile`, `torch.compile` of the eager
  module. A compile failure is recorded in `notes`, not raised; as Dynamo
  compiles at the first call, `run_workload` also leaves out a compiled
  variant whose first calls fail.
  """
  out = {"torch eager": (tm, False)}
  cl = copy.deepcopy(tm).to(memory_format=torch.channels_last)
  out["torch eager channels_last"] = (cl, True)
  if spec.torch_compile:
    try:
      compiled = torch.compile(copy.deepcopy(tm))
      out[TORCH_COMPILE] = (compiled, False)
    except Exception as e:  # noqa: BLE001  (recorded, the run goes on)
      notes.append(f"torch.compile unavailable: {error_line(e)}")
  return out


def torch_grads(tm: torch.nn.Module) -> dict[str, np.ndarray]:
  """Parameter gradients of a module, keyed like its state dict."""
  tm = getattr(tm, "_orig_mod", tm)
  return {n: p.grad.detach().float().cpu().numpy() for n, p in tm.named_parameters()
          if p.grad is not None}


def torch_params(tm: torch.nn.Module) -> dict[str, np.ndarray]:
  """State dict (parameters and BatchNorm statistics) as float32 numpy."""
  tm = getattr(tm, "_orig_mod", tm)
  return {k: v.detach().float().cpu().numpy() for k, v in tm.state_dict().items()
          if not k.endswith("num_batches_tracked")}


def flax_as_torch(tree: dict, model_name: str) -> dict[str, np.ndarray]:
  """A Flax variables-like tree ({'params': ...}, {'batch_stats': ...}) with torch keys."""
  return {k: np.asarray(v, np.float32) for k, v in bridge.flax_to_torch(jax.device_get(tree), model_name).items()
          if not k.endswith("num_batches_tracked")}


# ------------------------------------------------------------------ agreement


def relative_error(a, b) -> float:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def assert_close(what: str, jax_value, torch_value, tol: float) -> float:
  """Raises AgreementError unless ||jax - torch|| <= tol ||torch||; returns the error."""
  jv, tv = np.asarray(jax_value), np.asarray(torch_value)
  if jv.shape != tv.shape:
    raise AgreementError(f"{what}: shapes differ, JAX {jv.shape} vs PyTorch {tv.shape}")
  err = relative_error(jv, tv)
  if not np.isfinite(err) or err > tol:
    raise AgreementError(f"{what}: relative error {err:.3g} > {tol:.3g} between JAX and PyTorch")
  return err


def assert_trees_close(what: str, jax_tree: dict[str, np.ndarray], torch_tree: dict[str, np.ndarray],
                       tol: float, per_tensor_factor: float = 5.0) -> float:
  """Trees keyed like a torch state dict agree: all keys of `torch_tree` together within `tol`,
  and each tensor within `per_tensor_factor * tol`.

  Training-mode BatchNorm over few values per channel (batch 2 at a 7x7 map)
  is ill-conditioned, so single early-layer gradients of a deep network drift
  more than the whole; a wrong computation (a transposed kernel, a missing
  layer) is off by O(1) in both measures. Returns the whole-tree error.
  """
  missing = sorted(set(torch_tree) - set(jax_tree))
  if missing:
    raise AgreementError(f"{what}: JAX side lacks {missing[:5]}")
  for k, v in torch_tree.items():
    assert_close(f"{what}[{k}]", jax_tree[k], v, per_tensor_factor * tol)
  keys = sorted(torch_tree)
  return assert_close(what, np.concatenate([np.ravel(jax_tree[k]) for k in keys]),
                      np.concatenate([np.ravel(torch_tree[k]) for k in keys]), tol)


def assert_trees_close_or_as_accurate(what: str, jax_tree: dict[str, np.ndarray],
                                      torch_tree: dict[str, np.ndarray],
                                      reference_tree: dict[str, np.ndarray], tol: float,
                                      factor: float = 3.0) -> float:
  """Like `assert_trees_close`, but where the problem itself is ill-conditioned in float32,
  accepts JAX if it is at most `factor` times as far from a float64 reference as PyTorch is.

  A random-init ResNet-50 trained at batch 2 normalises over 98 values per
  channel in its last stage: there both float32 sides are ~2% from the
  float64 gradient, so they cannot agree to 1% with each other. Returns the
  JAX-vs-PyTorch whole-tree error.
  """
  try:
    return assert_trees_close(what, jax_tree, torch_tree, tol)
  except AgreementError as e:
    keys = sorted(torch_tree)
    flat = lambda tree: np.concatenate([np.ravel(tree[k]) for k in keys])  # noqa: E731
    jax_err = relative_error(flat(jax_tree), flat(reference_tree))
    torch_err = relative_error(flat(torch_tree), flat(reference_tree))
    if not jax_err <= factor * max(torch_err, tol / factor):
      raise AgreementError(f"{e}; and vs float64: JAX {jax_err:.3g}, PyTorch {torch_err:.3g}") from None
    return relative_error(flat(jax_tree), flat(torch_tree))


def float64_twin(tm: torch.nn.Module) -> torch.nn.Module:
  """A float64 copy of a PyTorch module, the reference for ill-conditioned checks."""
  return copy.deepcopy(getattr(tm, "_orig_mod", tm)).double()


def assert_images_close(what: str, jax_images, torch_images, step: float, max_flipped: float) -> float:
  """Adversarial images agree: all but `max_flipped` of the pixels within 1e-5.

  A sign-gradient attack amplifies rounding: a gradient entry within rounding
  of zero may take either sign, moving that pixel by 2 * step in one side
  only. A wrong attack disagrees on a large fraction of pixels; float
  rounding on a tiny fraction. Returns the fraction that differ.
  """
  jv, tv = np.asarray(jax_images, np.float32), np.asarray(torch_images, np.float32)
  if jv.shape != tv.shape:
    raise AgreementError(f"{what}: shapes differ, JAX {jv.shape} vs PyTorch {tv.shape}")
  diff = np.abs(jv - tv)
  flipped = float(np.mean(diff > 1e-5))
  if flipped > max_flipped:
    raise AgreementError(f"{what}: {flipped:.2%} of pixels differ (> {max_flipped:.2%}); "
                         f"max |diff| {diff.max():.3g} (one step is {step:.3g})")
  return flipped


# --------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
  """Per-call wall time of one variant."""
  median_s: float
  q1_s: float
  q3_s: float
  reps: int
  first_call_s: float  # the first (warm-up) call, incl. compilation where there is one

  @property
  def iqr_s(self) -> float:
    return self.q3_s - self.q1_s


def _quartiles(ts: list[float]) -> tuple[float, float, float]:
  if len(ts) < 2:
    return ts[0], ts[0], ts[0]
  q = statistics.quantiles(ts, n=4, method="inclusive")
  return q[1], q[0], q[2]


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 2, min_reps: int = 5,
                     max_reps: int = 50, budget_s: float = 30.0, log=print, optional: Collection[str] = (),
                     failures: dict[str, str] | None = None) -> dict[str, Timing]:
  """Times zero-argument callables round-robin; each call must finish its work before returning.

  Args:
    fns: variant name -> callable running one synchronised step.
    warmup: untimed calls per variant before measuring (the first compiles).
    min_reps, max_reps: bounds on timed calls per variant.
    budget_s: rough total seconds of timed calls across variants; the number
      of reps is chosen from the warm-up cost to fit it.
    log: progress printer.
    optional: variants that may fail to run (another framework's compiler):
      one whose warm-up raises is left out of the timing instead of ending
      the run. Any other variant's error propagates, and so does an optional
      variant's error after its warm-up succeeded.
    failures: if given, filled with variant name -> error of each optional
      variant left out.

  Returns:
    variant name -> Timing, for every variant that ran.
  """
  first, warm = {}, {}
  for name, fn in fns.items():
    try:
      t0 = time.perf_counter()
      fn()
      first[name] = time.perf_counter() - t0
      t = first[name]
      for _ in range(max(warmup - 1, 0)):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001  (an optional variant is left out; the others re-raise)
      if name not in optional:
        raise
      first.pop(name, None)
      if failures is not None:
        failures[name] = error_line(e)
      log(f"    warm-up {name}: FAILED, left out of the timing ({error_line(e)})")
      continue
    warm[name] = t
    log(f"    warm-up {name}: first call {first[name]:.3f}s, then {t:.3f}s")
  fns = {name: fn for name, fn in fns.items() if name in warm}
  per_round = sum(warm.values())
  reps = int(min(max_reps, max(min_reps, budget_s / max(per_round, 1e-9))))
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(reps):
    # Rotate the order so no variant always runs right after the same other one.
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      t0 = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t0)
  out = {}
  for name, ts in times.items():
    med, q1, q3 = _quartiles(ts)
    out[name] = Timing(med, q1, q3, len(ts), first[name])
  return out


PEAK_N = 2048
PEAK_VARIANTS = ("peak matmul jax", "peak matmul torch")


def peak_size() -> int:
  """Side of the peak matmul: 2048 on a CPU; 8192 on an accelerator, which 2048 leaves idle."""
  return PEAK_N if platform_name() == "cpu" else 4 * PEAK_N


def peak_dtype(dtype: str) -> str:
  """The peak matmul's dtype: the workload's on an accelerator (so % of peak is its MFU),
  float32 on a CPU, whose bfloat16 matmuls are slower than float32 ones."""
  return "float32" if platform_name() == "cpu" else dtype


def set_precision(dtype: str) -> None:
  """On an accelerator, float32 runs mean float32 arithmetic on both sides.

  There JAX's default precision and PyTorch's cuDNN default both compute
  float32 convolutions and matmuls in TF32 (10-bit mantissa), differently
  enough that the agreement checks' 2e-3 fails (measured on an H200: 3.4e-3
  on a loss). bfloat16 runs and CPUs (already float32) are left as they are.
  """
  if dtype != "float32" or platform_name() == "cpu":
    return
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False


def peak_matmul_timers(n: int | None = None, dtype: str = "float32") -> dict[str, Callable[[], Any]]:
  """An n x n matmul in `peak_dtype(dtype)` in each framework: the machine's attainable peak.

  `run_workload` times these interleaved with the workload's variants, so the
  peak is measured under the same machine load as the steps it normalises.
  """
  n = n or peak_size()
  dtype = peak_dtype(dtype)
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  aj = jax.device_put(jnp.asarray(a, dtype))
  mm = jax.jit(lambda m: m @ m)
  at = torch.from_numpy(a).to(torch_device(), getattr(torch, dtype))

  def torch_mm():
    torch.mm(at, at)
    torch_sync()

  return dict(zip(PEAK_VARIANTS, (lambda: mm(aj).block_until_ready(), torch_mm)))


def peak_matmul_flops(n: int | None = None, reps: int = 10, dtype: str = "float32") -> dict[str, float]:
  """FLOP/s of an n x n matmul (`peak_dtype(dtype)`) in each framework, timed interleaved."""
  n = n or peak_size()
  timing = time_interleaved(peak_matmul_timers(n, dtype), min_reps=reps, max_reps=reps, budget_s=0.0,
                            log=lambda *_: None)
  return {k.rsplit(" ", 1)[-1]: 2 * n ** 3 / t.median_s for k, t in timing.items()}


def step_flops(fn: Callable, *args) -> float:
  """FLOPs of `fn(*args)`: XLA's cost analysis on a CPU, `matmul_flops` on an accelerator.

  XLA:GPU's cost analysis leaves out the convolutions it hands to cuDNN (a
  ResNet-50 forward and backward at batch 128 counted 40 GFLOP of ~3,150), so
  there the count is the convolutions' and dot products' own arithmetic, the
  convention of MFU. Loops' bodies count once in both (see `xla_flops`).
  """
  return xla_flops(fn, *args) if platform_name() == "cpu" else matmul_flops(fn, *args)


def xla_flops(fn: Callable, *args) -> float:
  """FLOPs of `fn(*args)` from XLA's cost analysis of the compiled program.

  XLA counts a while loop's body once, not times its trip count, so callers
  pass loop-free functions (one attack step) and multiply.
  """
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan"))) if analysis else float("nan")


def matmul_flops(fn: Callable, *args) -> float:
  """2 x the multiply-adds of every convolution and dot product in `fn`'s jaxpr.

  A convolution's taps on padding are not counted (`_conv_multiply_adds`),
  as XLA's cost analysis does not count them. Traced, not compiled, so it is exact whatever backend runs the program and
  costs no compilation. Elementwise work (activations, normalisation) is left
  out, as MFU conventionally does. A `scan` counts its body `length` times, a
  while loop's body once (its trip count is not static), a `cond` its
  costliest branch.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    elif name == "conv_general_dilated":
      total += 2.0 * _conv_multiply_adds(eqn)
    sub = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
    if name == "cond":
      total += max(sub, default=0.0)
    elif name == "scan":
      total += eqn.params["length"] * sum(sub)
    else:
      total += sum(sub)
  return total


def _conv_multiply_adds(eqn) -> float:
  """Multiply-adds of one convolution: (output, kernel tap, input) triples whose input is real.

  Taps that land on padding or on the zeros of an input dilation are not
  arithmetic, and counting them would make a strided convolution's input
  gradient (a convolution of the dilated output gradient) four times its
  forward pass. Counted so, the forward pass, the input gradient and the
  weight gradient of a convolution have the same count, as they must. Each
  spatial dimension's (output, tap) pairs are counted apart (they are
  independent); each output element sums over the kernel's input features,
  already divided by feature_group_count.
  """
  p = eqn.params
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  out = eqn.outvars[0].aval.shape
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  pairs = 1
  for j in range(len(lhs_spec) - 2):
    size, taps, outputs = lhs[lhs_spec[2 + j]], rhs[rhs_spec[2 + j]], out[out_spec[2 + j]]
    stride, (pad_low, _) = p["window_strides"][j], p["padding"][j]
    lhs_dilation, rhs_dilation = p["lhs_dilation"][j], p["rhs_dilation"][j]
    last = (size - 1) * lhs_dilation
    pairs *= sum(1 for o in range(outputs) for k in range(taps)
                 if 0 <= (i := o * stride + k * rhs_dilation - pad_low) <= last and i % lhs_dilation == 0)
  return out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * pairs


def _sub_jaxprs(params: dict) -> list:
  """The jaxprs an equation's parameters hold (pjit, scan, while, cond, custom_vjp, remat...)."""
  out = []
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        out.append(v.jaxpr)
      elif isinstance(v, jax.extend.core.Jaxpr):
        out.append(v)
  return out


# ------------------------------------------------------------------- workload


@dataclasses.dataclass
class Workload:
  """One benchmark problem, ready to check and time.

  Attributes:
    name: workload name ('fwd_bwd', 'pgd10', ...).
    spec: the problem.
    check: runs both sides once from identical state; raises AgreementError
      on disagreement; returns {quantity: error} for the report.
    timers: variant -> zero-argument synchronised step.
    flops: () -> floating-point operations of one step (same on both sides),
      lazy because XLA's cost analysis compiles the program once more.
    notes: remarks for the report (e.g. why a variant is missing).
    work: optional () -> (unit, count per call), read after the check, for
      workloads whose throughput is not images (DAG iterations): the report
      then notes count / median for every variant.
  """
  name: str
  spec: Spec
  check: Callable[[], dict[str, float]]
  timers: dict[str, Callable[[], Any]]
  flops: Callable[[], float]
  notes: list[str] = dataclasses.field(default_factory=list)
  work: Callable[[], tuple[str, float]] | None = None


def is_torch_eager(variant: str) -> bool:
  """Whether a variant is PyTorch run eagerly: everything but 'jax*' and 'torch.compile'.

  Library variants ('torchattacks.PGD', 'foolbox', 'ART') run eager PyTorch too.
  """
  return not variant.startswith("jax") and variant != TORCH_COMPILE


def run_workload(workload: Workload, *, budget_s: float, min_reps: int,
                 log=print) -> list[dict[str, Any]]:
  """Checks agreement, then times every variant; returns one result row per variant."""
  spec = workload.spec
  log(f"== {workload.name} {spec.model} batch {spec.batch} {spec.dtype}")
  # The very first JAX call traces and compiles; time it before the check reuses the executable.
  t0 = time.perf_counter()
  workload.timers["jax"]()
  jax_first_call = time.perf_counter() - t0
  errors = workload.check()
  log("    agreement: " + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
  # torch.compile is an extra variant beside the eager reference: if Inductor cannot compile the
  # step, the row is timed without it and its notes say why.
  failures: dict[str, str] = {}
  timings = time_interleaved({**workload.timers, **peak_matmul_timers(dtype=spec.dtype)}, budget_s=budget_s,
                             min_reps=min_reps, log=log, optional=(TORCH_COMPILE,), failures=failures)
  # The larger of the two frameworks' matmul rates, measured in this very loop.
  peak = max(2 * peak_size() ** 3 / timings.pop(name).median_s for name in PEAK_VARIANTS)
  jax_median = timings["jax"].median_s
  torch_eager = min(t.median_s for n, t in timings.items() if is_torch_eager(n))
  rows = []
  timings["jax"].first_call_s = jax_first_call
  flops = workload.flops()
  notes = list(workload.notes) + [f"{variant} not timed: it failed to run ({error})"
                                   for variant, error in failures.items()]
  if workload.work is not None:
    unit, count = workload.work()
    notes.append(f"{unit} per second ({count:g} per call): "
                 + ", ".join(f"{variant} {count / t.median_s:.1f}" for variant, t in timings.items()))
  for variant, t in timings.items():
    rows.append({
        "workload": workload.name, "model": spec.model, "batch": spec.batch,
        "image_size": spec.shape[0], "dtype": spec.dtype, "variant": variant,
        "median_s": t.median_s, "iqr_s": t.iqr_s, "reps": t.reps,
        "images_per_s": spec.batch / t.median_s,
        # >1 means JAX is faster than the variant.
        "jax_speedup": t.median_s / jax_median,
        "jax_vs_best_torch_eager": torch_eager / jax_median,
        "first_call_s": t.first_call_s,
        # Compilation (JAX trace + XLA compile, or torch.compile): first call minus a steady one.
        "compile_s": max(t.first_call_s - t.median_s, 0.0),
        "gflop_per_step": flops / 1e9,
        "fraction_of_peak": flops / t.median_s / peak,
        "peak_gflops": peak / 1e9,
        "agreement": errors, "notes": notes,
    })
    log(f"    {variant:28s} {t.median_s * 1e3:9.1f} ms  IQR {t.iqr_s * 1e3:7.1f} ms  "
        f"({t.reps} reps)  {spec.batch / t.median_s:8.1f} img/s  "
        f"{flops / t.median_s / peak:6.1%} of peak")
  return rows


# ------------------------------------------------------------------------ CLI


def parse_args(argv=None, default_models=("resnet20", "resnet50")) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(default_models),
                 help="comma-separated models: " + ", ".join(SHAPES))
  p.add_argument("--batch", type=int, default=0, help="batch size; 0 = per-model default for the platform")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=10, help="attack steps (PGD-k)")
  p.add_argument("--torch-compile", default="on", choices=("on", "off", "force"),
                 help="time a torch.compile'd model too; benchmarks.run skips it for resnet50 on "
                      "CPU unless 'force'")
  p.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per workload and model")
  p.add_argument("--min-reps", type=int, default=5)
  p.add_argument("--quick", action="store_true", help="smoke run: tiny models, few reps, no torch.compile")
  p.add_argument("--json", default="", help="append result rows (JSON lines) to this file")
  args = p.parse_args(argv)
  if args.quick:
    args.models = ",".join(m if m.endswith("_tiny") else f"{m}_tiny" for m in args.models.split(","))
    args.budget, args.min_reps, args.torch_compile = 1.0, 3, "off"
  return args


def specs_from_args(args: argparse.Namespace, steps: int | None = None) -> list[Spec]:
  specs = []
  for model in [m for m in args.models.split(",") if m]:
    if model not in SHAPES:
      raise SystemExit(f"--models: unknown model {model!r}; known: {', '.join(SHAPES)}")
    batch = args.batch or DEFAULT_BATCH[(model, platform_name())]
    specs.append(Spec(model=model, batch=batch, dtype=args.dtype,
                      steps=args.steps if steps is None else steps,
                      torch_compile=args.torch_compile != "off"))
  return specs


def main(build: Callable[[Spec], Workload], argv=None, default_models=("resnet20", "resnet50"),
         steps: int | None = None) -> list[dict[str, Any]]:
  """Runs one workload script: every selected model, checked then timed."""
  args = parse_args(argv, default_models)
  set_precision(args.dtype)
  rows = []
  for spec in specs_from_args(args, steps):
    rows += run_workload(build(spec), budget_s=args.budget, min_reps=args.min_reps)
  if args.json:
    with open(args.json, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return rows


def flush() -> None:
  sys.stdout.flush()


def assert_images_close_or_as_accurate(what: str, jax_images, torch_images, reference_images,
                                       step: float, max_flipped: float, factor: float = 2.0) -> float:
  """`assert_images_close`, or, where float32 rounding alone scatters the attack's path
  (sign flips early in the loop compound), JAX is within `factor` of PyTorch's
  distance to the float64 attack. Returns the JAX-vs-PyTorch fraction."""
  try:
    return assert_images_close(what, jax_images, torch_images, step, max_flipped)
  except AgreementError as e:
    frac = lambda a, b: float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) > 1e-5))  # noqa: E731
    jax_far, torch_far = frac(jax_images, reference_images), frac(torch_images, reference_images)
    if not jax_far <= factor * max(torch_far, max_flipped):
      raise AgreementError(f"{e}; vs float64: JAX {jax_far:.2%}, PyTorch {torch_far:.2%}") from None
    return frac(jax_images, torch_images)


def loss_logits(logits: torch.Tensor) -> torch.Tensor:
  """Logits for the loss: bfloat16 (autocast) widened to float32, float64 kept.

  `.float()` alone would round a float64 reference's logits to float32, and
  the float32 rounding of the cross-entropy gradient is what scatters sign
  attacks (see `bench_universal`).
  """
  return logits if logits.dtype == torch.float64 else logits.float()
