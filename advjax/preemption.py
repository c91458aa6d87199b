"""SIGTERM as a request to stop cleanly, whenever it arrives.

Cloud TPU and GPU schedulers announce a preemption with SIGTERM. A run must
then save a checkpoint of the step it is at and exit with status 0, whatever
it is doing: importing libraries, compiling, training or evaluating.

`install()` (train.py calls it before anything heavy is imported) replaces
SIGTERM's default action, death, by setting a flag; `watch()` installs it for
the duration of a block and restores the previous handler afterwards. The
training loop asks `should_stop(step)` between steps: in a single process
that is the flag; across hosts it is JAX's preemption sync point, so every
host stops at the same step (`jax.distributed`'s coordination service catches
the signal there and its handler takes precedence over this one).
"""

import contextlib
import signal
import threading

_REQUESTED = threading.Event()


def _handler(signum, frame):
  del signum, frame
  _REQUESTED.set()


def install() -> None:
  """Makes SIGTERM set the stop flag instead of killing the process (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def watch():
  """Installs the SIGTERM handler for the block, then restores the previous one."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _handler)
  try:
    yield
  finally:
    if previous is not _handler:
      signal.signal(signal.SIGTERM, previous)


def requested() -> bool:
  """Whether this process has received SIGTERM."""
  return _REQUESTED.is_set()


def should_stop(step: int) -> bool:
  """Whether to save and stop after `step`; the same answer on every host."""
  import jax  # pylint: disable=g-import-not-at-top  (this module must import in microseconds)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # The preemption service is disabled.
      return False
  return requested()


def clear() -> None:
  """Forgets a stop request (a run that handled it, or a test)."""
  _REQUESTED.clear()
