"""Device mesh, shardings and multi-host set-up.

advjax runs data-parallel over a one-dimensional mesh whose axis is called
`data`: the global batch is split along its first dimension over every device
of every host, and the train state (parameters, optimiser state, batch
statistics, universal perturbations) is replicated. The same jit-compiled step
then runs unchanged on 1 CPU, 8 fake CPU devices, a GPU box or a TPU pod: jit
inserts the cross-device reductions that the global-batch means need, so no
model or loss ever names an axis.

Each host feeds only its own rows of a global batch; `shard_batch` assembles
the process-local numpy arrays into global `jax.Array`s.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from advjax.errors import ConfigError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """`config.distributed`: jax.distributed's settings for a multi-host run.

  Attributes:
    coordinator_address: 'host:port' of process 0's coordinator.
    num_processes: processes (hosts) in the run; 1 is a single host.
    process_id: this process's index in [0, num_processes).
  """
  coordinator_address: str = ""
  num_processes: int = 1
  process_id: int = 0

  def __post_init__(self):
    if not (1 <= self.num_processes <= 1_000_000 and 0 <= self.process_id < self.num_processes):
      raise ConfigError(f"num_processes={self.num_processes!r} must be >= 1 and process_id={self.process_id!r} "
                        "in [0, num_processes)")
    if self.num_processes > 1 and not self.coordinator_address:
      raise ConfigError("coordinator_address: a multi-host run needs the coordinator's 'host:port'")


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Connects this process to the others of a multi-host run (no-op for one process).

  On CPU, cross-process collectives need an explicit implementation; gloo is
  the one that ships with jaxlib.
  """
  if num_processes <= 1:
    return
  if jax.config.jax_platforms in (None, "", "cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)


def make_mesh(devices=None) -> Mesh:
  """A one-axis mesh over all (global) devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of a value held whole on every device (train state, universal perturbations)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch split along its first axis over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's rows of a global batch into global sharded arrays.

  Args:
    local_batch: numpy arrays whose first axis holds this process's rows; in a
      single-process run, the whole global batch.
    mesh: the data-parallel mesh.

  Returns:
    The same keys as global `jax.Array`s split along the `data` axis.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def local_devices_count(mesh: Mesh) -> int:
  """Number of mesh devices attached to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
