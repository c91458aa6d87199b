"""Bad input to train.py/eval.py: one line naming the problem, exit status 2, workdir untouched.

Most cases run in-process against `advjax.runs` (the error is one AdvjaxError
raised before anything is written); a few run the scripts themselves to check
the command-line contract: the `error:` line, status 2, no traceback.
"""

import hashlib
import json
import os
import subprocess
import sys

import jax
import pytest

from advjax import cli, config as config_lib, run_dir, runs
from advjax.errors import AdvjaxError
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs/tiny.py")


def _run(script, *args, device_count=8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], env=env,
                        capture_output=True, text=True, timeout=300)


def _snapshot(directory):
  """Path -> content hash of every file below `directory`."""
  out = {}
  for base, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(base, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _one_error_line(result, expected):
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny run (4 steps) whose directory bad invocations must leave untouched."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny.get_config()
  config.num_steps = 4
  runs.train_and_evaluate(config, workdir)
  return workdir


def _set(config, field, value):
  parent, _, leaf = field.rpartition(".")
  (config if not parent else config[parent])[leaf] = value


BAD_INPUTS = {
    "unknown model": ({"model.name": "resnet9000"}, "unknown model 'resnet9000'"),
    "unknown dataset": ({"data.name": "svhn9"}, "unknown dataset 'svhn9'"),
    "unknown activation": ({"model.activation": "swoosh"}, "unknown activation 'swoosh'"),
    "unknown head": ({"model.head": "hydra"}, "unknown head 'hydra'"),
    "unknown block": ({"model.insert_block": "nope"}, "unknown block 'nope'"),
    "unknown evaluator": ({"evals.clean.type": "cleanest"}, "unknown evaluator 'cleanest'"),
    "batch not divisible": ({"batch_size": 30}, "not divisible by the 8 devices"),
    "missing tfds dataset": ({"data.name": "cifar10", "data.data_dir": "/nonexistent/tfds"}, "tfds build"),
    "different config in an existing run": ({"model.name": "convnet"}, "different config"),
}


@pytest.mark.parametrize("field", ["init_checkpoint", "model.backbone_checkpoint"])
def test_a_missing_source_run_is_one_error_that_creates_nothing(tmp_path, field):
  config = tiny.get_config()
  _set(config, field, "/nonexistent/run")
  with pytest.raises(AdvjaxError, match="no checkpoints in '/nonexistent/run'"):
    runs.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_error_and_no_damage(finished_run, name):
  overrides, expected = BAD_INPUTS[name]
  config = tiny.get_config()
  config.num_steps = 4
  for field, value in overrides.items():
    _set(config, field, value)
  before = _snapshot(finished_run)
  with pytest.raises(AdvjaxError) as error:
    runs.train_and_evaluate(config, finished_run)
  assert expected in str(error.value) and "\n" not in str(error.value)
  assert _snapshot(finished_run) == before


def test_the_scripts_turn_errors_into_one_line_and_status_2(finished_run, tmp_path):
  before = _snapshot(finished_run)
  # A mistake found by the library, one in the flags, and one in the config file.
  _one_error_line(_run("train.py", "--config", TINY, "--workdir", finished_run, "--config.model.name=resnet9000"),
                  "unknown model 'resnet9000'")
  _one_error_line(_run("train.py", "--config", TINY, "--workdir", finished_run, "--config.batch_size=many"),
                  "batch_size")
  _one_error_line(_run("train.py", "--config", TINY, "--workdir", finished_run,
                       "--config.optimizer.learning_rte=0.1"),
                  "--config.optimizer.learning_rte: no such field (did you mean 'learning_rate'?)")
  _one_error_line(_run("train.py", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)), "nope.py")
  assert _snapshot(finished_run) == before


def test_an_override_of_a_moved_field_names_where_it_went():
  """The message for an unknown `--config.` path, from the error ml_collections raises (no subprocess needed)."""
  argv = ["train.py", "--config", TINY, "--config.sharedness=8", "--workdir", "w"]
  assert cli.unknown_override(argv, KeyError("'sharedness'")) == (
      "--config.sharedness: no such field; config.sharedness is now config.adversarial.heap_size")
  near_miss = KeyError("\\'atack\\'\\nDid you mean \"attack\" instead of \"atack\"?")
  assert cli.unknown_override(["--config.adversarial.atack.eps=3"], near_miss) == (
      "--config.adversarial.atack.eps: no such field (did you mean 'attack'?)")


EXIT_PROBE = """
import atexit, signal, sys
from advjax import cli, preemption
preemption.install()
# At exit, after main returned: the disposition CPython's finalisation would find.
atexit.register(lambda: print("sigterm at exit:", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, flush=True))
cli.run(lambda config, workdir: None)
"""


def test_sigterm_after_the_work_is_done_cannot_change_the_exit_status(tmp_path):
  """Python puts its own handler back to the default while it shuts down; the scripts ignore SIGTERM by then."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-c", EXIT_PROBE, "--config", TINY, "--workdir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "sigterm at exit: True" in result.stdout


def test_orbax_logs_do_not_reach_the_scripts_output():
  import logging

  from absl import logging as absl_logging
  cli.quiet_library_logs()
  cli.quiet_library_logs()  # Idempotent.
  handler = absl_logging.get_absl_handler()
  assert handler.filters.count(cli._not_orbax) == 1  # pylint: disable=protected-access
  record = lambda path: logging.LogRecord("absl", logging.ERROR, path, 1, "writer thread failed", None, None)  # noqa: E731
  assert not handler.filter(record("/site-packages/orbax/checkpoint/_src/futures/future.py"))
  assert handler.filter(record("/work/advjax/run_dir/checkpoints.py"))
  # A read of a damaged checkpoint leaves orbax coroutines that fail as they are collected: not shown.
  shown = []
  before = sys.unraisablehook
  try:
    sys.unraisablehook = lambda u: shown.append(u.exc_value)  # What Python would print, recorded.
    cli.quiet_library_logs()
    hook = sys.unraisablehook
    args = type("Unraisable", (), {"object": None, "exc_value": RuntimeError("Event loop is closed")})
    hook(args)
    other = type("Unraisable", (), {"object": None, "exc_value": ValueError("ours")})
    hook(other)
  finally:
    sys.unraisablehook = before
  assert [str(e) for e in shown] == ["ours"]


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  config = tiny.get_config()
  with pytest.raises(AdvjaxError, match="workdir"):
    runs.train_and_evaluate(config, str(blocker / "run"))
  assert blocker.read_text() == "not a directory"


def test_eval_without_checkpoint(tmp_path):
  with pytest.raises(AdvjaxError, match="no checkpoints"):
    runs.evaluate_run(tiny.get_config(), str(tmp_path))


def test_eval_writes_eval_json(finished_run):
  result = _run("eval.py", "--config", TINY, "--workdir", finished_run, "--config.num_steps=4")
  assert result.returncode == 0, result.stderr
  assert os.path.exists(os.path.join(finished_run, "eval.json"))
  assert jax.device_count() == 8


def test_eval_entries_choose_what_eval_runs(finished_run):
  config = tiny.get_config()
  config.num_steps = 4
  config.evals.second = config_lib.eval_entry("clean")
  config.eval.entries = ("second",)
  config.eval.output_file = "second.json"
  report = runs.evaluate_run(config, finished_run)
  assert set(report) == {"step", "second"}
  with open(os.path.join(finished_run, "second.json")) as f:
    assert set(json.load(f)) == {"step", "second"}


def test_a_run_from_before_a_new_field_resumes_while_the_field_keeps_its_default(tmp_path):
  """A config.json without a field added later (here aux_loss_weight) is no change at the default."""
  config = config_lib.base_config().to_dict()
  old = {k: v for k, v in config.items() if k != "aux_loss_weight"}
  (tmp_path / "config.json").write_text(json.dumps(old))
  run_dir.prepare(str(tmp_path), config, config_lib.base_config().to_dict())
  with pytest.raises(AdvjaxError, match=r"different config \(aux_loss_weight\)"):
    run_dir.prepare(str(tmp_path), {**config, "aux_loss_weight": 0.5}, config_lib.base_config().to_dict())
