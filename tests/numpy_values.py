"""Values for an abstract (eval_shape) pytree of model variables or a train state, drawn in NumPy.

Tests whose values only need to be plausible build them this way instead of
compiling the model's init program.
"""

import jax
import numpy as np

from advjax.run_dir.checkpoints import path_name


def draw_like(shapes, seed: int = 0, fixed: dict[str, float] | None = None):
  """NumPy arrays with `shapes`' structure, shapes and dtypes.

  Kernels He-normal (std sqrt(2 / fan_in)); BatchNorm scales and running
  variances one; leaves named in `fixed` that constant; everything else,
  optimiser state included, zero.

  Args:
    shapes: a pytree of `jax.ShapeDtypeStruct` (e.g. `jax.eval_shape(model.init, ...)`).
    seed: NumPy seed of the kernels.
    fixed: {leaf name: value} for other constant leaves.
  """
  rng = np.random.default_rng(seed)
  fixed = fixed or {}

  def draw(path, leaf):
    parts = path_name(path).split("/")
    name = parts[-1]
    if name in fixed:
      return np.full(leaf.shape, fixed[name], leaf.dtype)
    if parts[0] == "opt_state":
      return np.zeros(leaf.shape, leaf.dtype)
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
    if name == "var" or name.startswith("scale"):
      return np.ones(leaf.shape, leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)
