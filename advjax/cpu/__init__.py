"""Everything advjax does to run fast on XLA:CPU, behind one wall.

The models read as plain Flax (`nn.Conv`, `nn.max_pool`, a BatchNorm
differentiated by JAX) and every program advjax compiles goes through one
`jit`. On the CPU backend, four pieces change how those run, never what they
compute (values and gradients stay those of the plain layers, up to float
rounding; tests/cpu/ checks each, and tests/models/test_cpu_tuning.py whole
models):

  compilation  `jit`: jax.jit with per-program compiler options: XLA's
               multi-threaded convolutions instead of single-threaded
               YNNPACK fusions (PGD-10 on make train's convnet 1.8x faster
               on 2 cores), and a quicker compile for programs that run once
  convolution  `Conv`: nn.Conv whose input gradient is itself a forward
               convolution, which XLA:CPU keeps fast inside the attacks'
               rolled loops (the convnet's 10-step loop was ~7x slower
               with autodiff's transposed convolution)
  pooling      `max_pool`: nn.max_pool whose backward pass is a mask
               instead of XLA:CPU's scalar select-and-scatter loop
  batchnorm    training-mode BatchNorm with a closed-form backward pass
               whose sums run as multi-threaded dots

`advjax.models.layers` and `advjax.models.norms` pick the tuned or the plain
layer; `tuning` holds the one switch, `$ADVJAX_CPU_TUNING` ('all_cores', the
default; 'library', tuned layers with jaxlib's default convolutions; 'off',
plain Flax and jaxlib's defaults). On accelerators the layers are always the
plain ones, and `jit` adds no option.
"""

from advjax.cpu import batchnorm, compilation, convolution, pooling, tuning
from advjax.cpu.compilation import jit

__all__ = ["batchnorm", "compilation", "convolution", "jit", "pooling", "tuning"]
