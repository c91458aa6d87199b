"""The one switch of the CPU tuning: `$ADVJAX_CPU_TUNING`.

  all_cores  (default) the tuned layers, and XLA's multi-threaded
             convolutions for every program advjax compiles
  library    the tuned layers, with jaxlib's default (YNNPACK) convolutions,
             whose rounding does not depend on the per-device batch: runs on
             1 and 8 devices then agree step for step
  off        plain Flax layers (`nn.Conv`, `nn.max_pool`, BatchNorm by
             autodiff) and jaxlib's default compilation: the models as they
             read, with nothing of this package in the way

The layers are tuned only on the CPU backend; on accelerators the models are
plain Flax whatever the variable says. The variable is read when a program
is traced or compiled, so set it before the first advjax program runs.
"""

from __future__ import annotations

import os

import jax

ENV = "ADVJAX_CPU_TUNING"
MODES = ("all_cores", "library", "off")
# The variable's earlier name, refused with a message naming the new one.
_OLD_ENV = "ADVJAX_CPU_CONVOLUTIONS"


def mode() -> str:
  """$ADVJAX_CPU_TUNING, default 'all_cores'.

  Raises:
    ValueError: the variable names no known mode, or the old variable is set.
  """
  if os.environ.get(_OLD_ENV):
    raise ValueError(f"{_OLD_ENV} is now {ENV} (one of {', '.join(MODES)})")
  value = os.environ.get(ENV, "") or "all_cores"
  if value not in MODES:
    raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
  return value


def layers_tuned() -> bool:
  """Whether models use the CPU-tuned convolution, max pool and BatchNorm (CPU backend, mode not 'off')."""
  return mode() != "off" and jax.default_backend() == "cpu"
