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


# `make test` runs two workers (pytest-xdist, --dist loadgroup). The longest tests
# go first, so that the two workers finish together instead of one waiting on a
# long test that started last (measured with --durations; a stale name only
# changes the order).
_LONGEST_FIRST = (
    "test_denoising_imagenet_resnext101_config_trains_one_step_on_mock_data",
    "test_voc_fcn_resnet50_config_trains_one_step_on_a_voc_folder",
    "test_per_pixel_adversarial_training_on_one_and_eight_devices",
    "test_cityscapes_fcn8_config_trains_one_step_on_mock_data",
    "test_two_processes_match_one_process",
    "test_sweep_writes_tables_and_figures_and_resumes",
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


def _fixture_group(item) -> str | None:
  """The xdist group of `item`: its module, if it uses a module-scoped fixture that its own
  module defines; else None."""
  module = _module(item)
  info = getattr(item, "_fixtureinfo", None)
  defs = info.name2fixturedefs.values() if info is not None else ()
  if any(d.scope == "module" and d.baseid == module for fixturedefs in defs for d in fixturedefs):
    return module.replace("/", ".")
  return None


def pytest_collection_modifyitems(config, items):
  """Longest tests first; the tests that share a module fixture on one worker, in one run.

  Under --dist loadgroup, tests that use a module-scoped fixture of their
  own module form one group per module (one worker builds the fixture once,
  not each worker that draws one of them); the other tests are spread one
  by one. Without xdist the marks do nothing.
  """
  del config
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}

  def own_rank(item):
    return rank.get(item.originalname, len(rank))

  grouped = set()
  for item in items:
    group = _fixture_group(item)
    if group is not None:
      item.add_marker(pytest.mark.xdist_group(group))
      grouped.add(_module(item))
  # A module with a fixture group moves as a whole, at its longest test's rank and in its own
  # order: pytest tears a module fixture down as soon as a test of another module runs, so a
  # module split by the sort would build its fixture twice.
  module_rank = {}
  for item in items:
    if _module(item) in grouped:
      module_rank[_module(item)] = min(module_rank.get(_module(item), len(rank)), own_rank(item))
  items.sort(key=lambda item: module_rank.get(_module(item), own_rank(item)))
