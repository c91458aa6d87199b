"""Per-program XLA compiler options, applied without touching XLA_FLAGS.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions, which run on a
single core; XLA's own (Eigen) convolutions use every core. On a 2-core
machine a 3x3 convolution's forward and backward passes ran about twice as
fast on the Eigen path. The compile option

    xla_cpu_experimental_ynn_fusion_type = LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

keeps YNNPACK for matrix multiplies only. Measured on this project's
workloads (idle 2-core machine, convnet at batch 128, `make bench`): PGD-10
1.74 s -> 0.96 s, the training forward + backward pass 289 ms -> 239 ms.
It loses when another job holds a core (a two-thread kernel then waits for
it: the 10-step attack loop took 1.2x longer at load 2), and XLA's own
depthwise convolution is ~2x slower than YNNPACK's.

The Eigen convolutions' rounding depends on the batch they see, so a run
on one device and the same run with its batch sharded over eight devices
no longer agree to the last bit: on the digits, a first-maximum max pool
over a flat background then routes some gradients differently and the two
runs' losses part by ~1e-3 within a few steps. YNNPACK's convolutions are
invariant to it; choose 'library' below where runs on different device
counts must match step for step.

Every program advjax compiles itself (train steps, attacks, evaluators,
analyses) goes through `jit` below and gets the option on the CPU backend.
The choice is per program: nothing is written to `XLA_FLAGS`, and the
user's own `jax.jit` programs compile as before. To keep jaxlib's default
for advjax's programs too (a machine whose cores are busy with other work,
a model made of depthwise convolutions), set `ADVJAX_CPU_TUNING=library`
(or `off`, `advjax.cpu.tuning`) before the first advjax program compiles;
a caller's own `compiler_options` passed to `jit` override both.

The option could also be set process-wide through `XLA_FLAGS`
(`--xla_cpu_experimental_ynn_fusion_type=individual_dot`), which changes
every program of the user's process and must happen before JAX starts;
here it is passed per program through `jax.jit(..., compiler_options=...)`
(equivalently `jax.jit(f).lower(*args).compile(options)`).

`cpu_compiler_options(backend)` returns the option for the CPU backend when
the installed jaxlib accepts it (probed once, at the first compile, by
compiling a scalar program) and {} otherwise, so the same code runs
unchanged on accelerators and on jaxlibs that drop the option. `jit` is
`jax.jit` with those options merged under the caller's own
`compiler_options`; it decides them at the first call, not at import, so
importing advjax initialises no backend (`jax.distributed.initialize` and
`XLA_FLAGS` set after the import still work).

Programs that run once. Initialising a model draws every parameter tensor
from its own threefry stream, and XLA:CPU's default LLVM pipeline spends
~0.35 s compiling each of those integer-heavy streams: `convnet_tiny`'s
init took 3.3 s to compile for 0.6 ms of work. `jit(..., run_once=True)`
compiles such a program with LLVM's optimisation level 1 (on the CPU
backend only), which took the init compiles of 13 models (the tiny
variants, the convnets, ResNet-14/20) from 52 s to 15 s, with values
bit-identical to the default level's for every one of them
(tests/test_compilation.py checks make train's convnet and a ResNet with
non-local blocks). Level 0 is not used: it changed some initial values.

Options belong to a compiled program, and JAX refuses them on a jit nested
inside another traced computation ("`compiler_options` can only be passed
to top-level `jax.jit`"). The function `jit` returns therefore runs with the
options when called with concrete arrays and as a plain `jax.jit` when any
argument is a tracer (inside another jit, a loop body, grad or vmap), where
it is inlined into the caller's program and compiled with the caller's
options.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from advjax.cpu import tuning

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
INDIVIDUAL_DOT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
# LLVM optimisation level of XLA:CPU programs that run once (see the module docstring).
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 1}


@functools.cache
def _cpu_accepts(name: str, value: str) -> bool:
  """Whether this jaxlib's CPU compiler knows the option `name=value`."""
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:
    return False
  probe = jax.device_put(np.float32(0), cpu)
  try:
    jax.jit(lambda v: v + 1).lower(probe).compile({name: value})
  except jax.errors.JaxRuntimeError:
    return False
  return True


def cpu_compiler_options(backend: str | None = None) -> dict[str, Any]:
  """Compiler options that make XLA:CPU run convolutions on all cores.

  Args:
    backend: platform name ('cpu', 'gpu', 'tpu'); None = `jax.default_backend()`.

  Returns:
    {YNN_FUSION_OPTION: INDIVIDUAL_DOT} on the CPU backend of a jaxlib that
    accepts it, when $ADVJAX_CPU_TUNING is 'all_cores' (the default); else {}.
  """
  if tuning.mode() != "all_cores":
    return {}
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu" or not _cpu_accepts(YNN_FUSION_OPTION, INDIVIDUAL_DOT):
    return {}
  return {YNN_FUSION_OPTION: INDIVIDUAL_DOT}


def cpu_run_once_options(backend: str | None = None) -> dict[str, Any]:
  """Compiler options for a program that runs once (model initialisation): quicker to compile.

  Args:
    backend: platform name; None = `jax.default_backend()`.

  Returns:
    RUN_ONCE_OPTIONS on the CPU backend of a jaxlib that accepts them, unless
    $ADVJAX_CPU_TUNING is 'off'; else {}.
  """
  backend = jax.default_backend() if backend is None else backend
  if tuning.mode() == "off" or backend != "cpu" or not all(_cpu_accepts(k, v) for k, v in RUN_ONCE_OPTIONS.items()):
    return {}
  return dict(RUN_ONCE_OPTIONS)


def _backend_of(jit_kwargs: dict[str, Any]) -> str | None:
  if jit_kwargs.get("backend") is not None:
    return jit_kwargs["backend"]
  if jit_kwargs.get("device") is not None:
    return jit_kwargs["device"].platform
  return None


class _OptionJit:
  """`jax.jit` with compiler options at top level and without them when traced.

  The options are decided at the first top-level call (or `.lower`, ...), so
  that building the wrapper, e.g. as a decorator at import, starts no backend.
  """

  def __init__(self, fn: Callable, options: dict[str, Any], jit_kwargs: dict[str, Any], run_once: bool = False):
    self._fn, self._options, self._jit_kwargs, self._run_once = fn, options, jit_kwargs, run_once
    self._nested = jax.jit(fn, **jit_kwargs)
    self._top_jit = None
    functools.update_wrapper(self, fn)

  @property
  def _top(self):
    if self._top_jit is None:
      backend = _backend_of(self._jit_kwargs)
      once = cpu_run_once_options(backend) if self._run_once else {}
      options = {**cpu_compiler_options(backend), **once, **self._options}
      self._top_jit = jax.jit(self._fn, compiler_options=options or None, **self._jit_kwargs)
    return self._top_jit

  def __call__(self, *args, **kwargs):
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))
    return (self._nested if traced else self._top)(*args, **kwargs)

  def __getattr__(self, name: str):
    # lower, trace, eval_shape, ... of the top-level (option-carrying) jit.
    if name.startswith("__") or name in ("_fn", "_options", "_jit_kwargs", "_run_once", "_nested", "_top_jit"):
      raise AttributeError(name)  # Not yet set (copy, pickle): no recursion through _top.
    return getattr(self._top, name)


def jit(fn: Callable | None = None, /, *, run_once: bool = False, **jit_kwargs) -> Callable:
  """`jax.jit` with `cpu_compiler_options()` for the program's backend.

  Usable as `jit(f, donate_argnums=0)`, `@jit` or `@jit(static_argnums=1)`.
  The caller's `compiler_options` win over the defaults for the same key.
  Nothing global changes: other programs of the process compile as before.
  Called with tracers (from inside another traced function) it behaves as
  `jax.jit(fn, **jit_kwargs)` without options, see the module docstring.

  Args:
    fn: the function to compile; None returns a decorator.
    run_once: the program runs once or a few times (model initialisation):
      add `cpu_run_once_options()`, a quicker compile.
    **jit_kwargs: any `jax.jit` keyword argument.

  Returns:
    The jitted function (or a decorator producing one); `.lower(...)` and
    the other attributes of `jax.jit`'s result refer to the top-level,
    option-carrying version.
  """
  if fn is None:
    return functools.partial(jit, run_once=run_once, **jit_kwargs)
  return _OptionJit(fn, jit_kwargs.pop("compiler_options", None) or {}, jit_kwargs, run_once)
