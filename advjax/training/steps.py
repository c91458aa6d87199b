"""Jit-compilation of a train step over the data-parallel mesh.

An objective's `train_step(state, batch) -> (state, metrics)` is pure;
`compile_train_step` jits it with the state replicated, the batch split over
the `data` axis and the old state donated, so the same program runs on one
CPU, eight fake devices or a pod slice, and jit inserts the cross-device
reductions the global-batch means need.
"""

from collections.abc import Callable

import jax
from jax.sharding import Mesh

from advjax import parallel
from advjax.training.train_state import TrainState

TrainStep = Callable[[TrainState, dict], tuple[TrainState, dict]]


def compile_train_step(train_step: TrainStep, state: TrainState, mesh: Mesh) -> TrainStep:
  """jit over the mesh: state replicated and donated, batch data-parallel, metrics replicated."""
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  return jax.jit(
      train_step,
      in_shardings=(state_sharding, parallel.batch_sharded(mesh)),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0)
