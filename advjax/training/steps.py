"""Jit-compilation of a train step over the data-parallel mesh, with a non-finite guard.

An objective's `train_step(state, batch) -> (state, metrics)` is pure;
`compile_train_step` jits it with the state replicated, the batch split over
the `data` axis and the old state donated, so the same program runs on one
CPU, eight fake devices or a pod slice, and jit inserts the cross-device
reductions the global-batch means need.

The guard (big_vision's, in spirit) adds a metric `finite`: whether every
metric (the loss, the gradient norm) and every floating-point leaf of the new
state (parameters, optimiser and model state) is finite. With
`nonfinite='skip'` a step that is not finite is undone inside the program:
the state keeps its old values and only the step counter advances, so the
run moves on to the next batch. With 'stop' (the default) the state is left
as computed and the training loop, which reads `finite` before it logs or
saves anything, stops the run with a `NonFiniteError` naming the step.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from advjax.cpu import compilation
from advjax import parallel
from advjax.training.train_state import TrainState

TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]
NONFINITE_MODES = ("stop", "skip")


def all_finite(tree) -> jax.Array:
  """Whether every inexact leaf of `tree` is finite (a scalar bool)."""
  checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def guard(train_step: TrainStep, mode: str = "stop") -> TrainStep:
  """`train_step` with the `finite` metric and, for mode 'skip', non-finite steps undone.

  Args:
    train_step: the objective's step.
    mode: one of `NONFINITE_MODES` (`config.nonfinite`, checked with the
      config): 'skip' undoes a non-finite step; 'stop' leaves it to the loop.
  """

  def guarded(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    new_state, metrics = train_step(state, batch)
    finite = all_finite((metrics, new_state.params, new_state.opt_state, new_state.model_state,
                         new_state.extras))
    if mode == "skip":
      kept = jax.tree.map(lambda new, old: new if jax.dtypes.issubdtype(new.dtype, jax.dtypes.prng_key)
                          else jnp.where(finite, new, old), new_state, state)
      new_state = kept.replace(step=new_state.step)
    return new_state, {**metrics, "finite": finite}

  return guarded


def compile_train_step(train_step: TrainStep, state: TrainState, mesh: Mesh) -> TrainStep:
  """jit over the mesh: state replicated and donated, batch data-parallel, metrics replicated."""
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  return compilation.jit(
      train_step,
      in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0)
