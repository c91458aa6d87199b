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

from advjax.cpu import tuning  # noqa: E402


@pytest.fixture(scope="module")
def device_count_invariant_convolutions():
  """XLA:CPU's multi-threaded convolutions round differently for different per-device
  batches (see advjax.cpu.compilation), so runs on 1 and 8 devices would part after a few
  steps; modules that compare them run on the library path, which is invariant."""
  before = os.environ.get(tuning.ENV)
  os.environ[tuning.ENV] = "library"
  yield
  if before is None:
    del os.environ[tuning.ENV]
  else:
    os.environ[tuning.ENV] = before


# `make test` runs two workers (pytest-xdist) with `--dist loadscope
# --no-loadscope-reorder`: each test module runs whole on one worker, so a
# module-scoped fixture (a trained reference run, most of them) is built once,
# and the workers take the modules in collection order. (`--dist loadgroup`
# with `xdist_group` marks would group only the tests that share a fixture,
# but pytest-xdist 3.8 cannot add its group to pytest 9.2's node ids: its
# groups were silently ignored, and such fixtures were built on both workers.)
# The modules with the longest tests go first, so that the workers finish
# together instead of one waiting on a long module that started last
# (measured with --durations; a stale name only changes the order).
_LONGEST_FIRST = (
    "test_denoising_imagenet_resnext101_config_trains_one_step_on_mock_data",
    "test_voc_fcn_resnet50_config_trains_one_step_on_a_voc_folder",
    "test_per_pixel_adversarial_training_on_one_and_eight_devices",
    "test_cityscapes_fcn8_config_trains_one_step_on_mock_data",
    "test_two_processes_match_one_process",
    "test_sweep_trains_every_run_writes_tables_and_figures_and_resumes",
    "test_segmentation_rows_agree_and_fail_on_a_wrong_weight_copy",
    "test_registered_parts_train_and_evaluate_through_the_usual_path",
    "test_universality_cifar10_config_has_the_papers_settings_and_trains_one_step",
    "test_fine_grained_advprop_trains_a_set_on_the_augmented_view",
    "test_advprop_trains_end_to_end_and_checkpoints_the_aux_set",
    "test_delta_in_ball_and_identical_on_every_device",
    "test_bad_input_is_one_error_and_no_damage",
    "test_denoising_cost_benchmark_reports_each_variants_share",
    "test_cost_ratio_benchmark_runs",
)


def _module(item) -> str:
  """The path of `item`'s test module, e.g. 'tests/test_sweep.py'."""
  return item.nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
  """Modules in the order of their longest test (longest first), each module's tests kept together.

  The sort is stable: a module's tests keep their order, and modules without a
  listed test keep theirs. Run serially, this also keeps each module fixture
  alive from its module's first test to its last (pytest tears one down as
  soon as a test of another module runs).
  """
  del config
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  module_rank = {}
  for item in items:
    module = _module(item)
    module_rank[module] = min(module_rank.get(module, len(rank)), rank.get(item.originalname, len(rank)))
  items.sort(key=lambda item: module_rank[_module(item)])
