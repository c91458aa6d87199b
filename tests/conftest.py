"""Test setup: eight fake CPU devices, so sharded code runs as on a pod slice."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent compilation cache for the session and every train.py / eval.py
# it starts (they inherit the environment): the subprocess tests run the same
# tiny programs again and again, and XLA:CPU compiles dominate their time. A
# fresh directory per session, removed at exit, so no test reads another
# session's executables.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="advjax-test-xla-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import sys  # noqa: E402

# The repository root holds configs/ and benchmarks/, which tests import.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from advjax import compilation  # noqa: E402


@pytest.fixture(scope="module")
def device_count_invariant_convolutions():
  """XLA:CPU's multi-threaded convolutions round differently for different per-device
  batches (see advjax.compilation), so runs on 1 and 8 devices would part after a few
  steps; modules that compare them run on the library path, which is invariant."""
  before = os.environ.get(compilation.CONVOLUTIONS_ENV)
  os.environ[compilation.CONVOLUTIONS_ENV] = "library"
  yield
  if before is None:
    del os.environ[compilation.CONVOLUTIONS_ENV]
  else:
    os.environ[compilation.CONVOLUTIONS_ENV] = before
