"""Per-program XLA compiler options, applied without touching XLA_FLAGS.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions, which run on a
single core; XLA's own (Eigen) convolutions use every core. On a 2-core
machine a 3x3 convolution's forward and backward passes ran about twice as
fast on the Eigen path. The compile option

    xla_cpu_experimental_ynn_fusion_type = LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

keeps YNNPACK for matrix multiplies only. It pays off only when the cores
are free: the convnet's 10-step attack loop (with advjax.models.convolution
and pooling) ran in 0.69x the time on an idle 2-core machine (1.76 cores
busy instead of 1.2), but 1.2x *longer* with another job holding a core,
and XLA's own depthwise convolution is ~2x slower than YNNPACK's. Hence it is
opt-in: nothing in advjax applies it unless a caller uses `jit` below.

It can be set process-wide through
`XLA_FLAGS`, which changes every program of the user's process and must
happen before JAX starts; instead it is passed here per program, through
`jax.jit(..., compiler_options=...)` (accepted by jax.jit in this version;
equivalently `jax.jit(f).lower(*args).compile(options)`).

`cpu_compiler_options(backend)` returns the option for the CPU backend when
the installed jaxlib accepts it (probed once by compiling a scalar program),
and {} otherwise, so the same code runs unchanged on accelerators and on
jaxlibs that drop the option. `jit` is `jax.jit` with those options merged
under the caller's own `compiler_options`.

Options belong to a compiled program, and JAX refuses them on a jit nested
inside another traced computation ("`compiler_options` can only be passed
to top-level `jax.jit`"). The function `jit` returns therefore runs with the
options when called with concrete arrays and as a plain `jax.jit` when any
argument is a tracer (inside another jit, a loop body, grad or vmap), where
it is inlined into the caller's program and compiled with the caller's
options. Jit the outermost step (train step, attack, evaluation) with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
INDIVIDUAL_DOT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


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
    accepts it, else {}.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu" or not _cpu_accepts(YNN_FUSION_OPTION, INDIVIDUAL_DOT):
    return {}
  return {YNN_FUSION_OPTION: INDIVIDUAL_DOT}


def _backend_of(jit_kwargs: dict[str, Any]) -> str | None:
  if jit_kwargs.get("backend") is not None:
    return jit_kwargs["backend"]
  if jit_kwargs.get("device") is not None:
    return jit_kwargs["device"].platform
  return None


class _OptionJit:
  """`jax.jit` with compiler options at top level and without them when traced."""

  def __init__(self, fn: Callable, options: dict[str, Any], jit_kwargs: dict[str, Any]):
    self._top = jax.jit(fn, compiler_options=options or None, **jit_kwargs)
    self._nested = jax.jit(fn, **jit_kwargs)
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))
    return (self._nested if traced else self._top)(*args, **kwargs)

  def __getattr__(self, name: str):
    # lower, trace, eval_shape, ... of the top-level (option-carrying) jit.
    return getattr(self._top, name)


def jit(fn: Callable | None = None, /, **jit_kwargs) -> Callable:
  """`jax.jit` with `cpu_compiler_options()` for the program's backend.

  Usable as `jit(f, donate_argnums=0)`, `@jit` or `@jit(static_argnums=1)`.
  The caller's `compiler_options` win over the defaults for the same key.
  Nothing global changes: other programs of the process compile as before.
  Called with tracers (from inside another traced function) it behaves as
  `jax.jit(fn, **jit_kwargs)` without options, see the module docstring.

  Args:
    fn: the function to compile; None returns a decorator.
    **jit_kwargs: any `jax.jit` keyword argument.

  Returns:
    The jitted function (or a decorator producing one); `.lower(...)` and
    the other attributes of `jax.jit`'s result refer to the top-level,
    option-carrying version.
  """
  if fn is None:
    return functools.partial(jit, **jit_kwargs)
  options = {**cpu_compiler_options(_backend_of(jit_kwargs)), **(jit_kwargs.pop("compiler_options", None) or {})}
  return _OptionJit(fn, options, jit_kwargs)
