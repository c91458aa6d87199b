"""Test setup: eight fake CPU devices, so sharded code runs as on a pod slice."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys  # noqa: E402

# The repository root holds configs/ and benchmarks/, which tests import.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
