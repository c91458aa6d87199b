"""Bad input to train.py/eval.py: one line naming the problem, exit status 2, workdir untouched."""

import hashlib
import os
import subprocess
import sys

import pytest

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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny run whose directory bad invocations must leave untouched."""
  workdir = str(tmp_path_factory.mktemp("run"))
  result = _run("train.py", "--config", TINY, "--workdir", workdir, "--config.num_steps=4")
  assert result.returncode == 0, result.stderr
  return workdir


BAD_INPUTS = {
    "unknown model": (["--config.model.name=resnet9000"], "unknown model 'resnet9000'"),
    "unknown dataset": (["--config.data.name=svhn9"], "unknown dataset 'svhn9'"),
    "unknown activation": (["--config.model.activation=swoosh"], "unknown activation 'swoosh'"),
    "batch not divisible": (["--config.batch_size=30"], "not divisible by the 8 devices"),
    "missing tfds dataset": (["--config.data.name=cifar10", "--config.data.data_dir=/nonexistent/tfds"], "cifar10"),
    "config field that does not exist": (["--config.optimizer.learning_rte=0.1"], "learning_rte"),
    "value of the wrong type": (["--config.batch_size=many"], "batch_size"),
    "different config in an existing run": (["--config.model.name=convnet"], "different config"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_with_status_2_and_no_damage(finished_run, name):
  overrides, expected = BAD_INPUTS[name]
  before = _snapshot(finished_run)
  result = _run("train.py", "--config", TINY, "--workdir", finished_run, *overrides)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert "Traceback" not in result.stderr
  assert _snapshot(finished_run) == before


def test_missing_dataset_message_says_how_to_prepare(tmp_path):
  result = _run("train.py", "--config", TINY, "--workdir", str(tmp_path / "w"),
                "--config.data.name=cifar10", f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert result.returncode == 2
  assert "tfds build" in result.stderr


def test_fine_tuning_from_a_missing_run(tmp_path):
  result = _run("train.py", "--config", TINY, "--workdir", str(tmp_path / "w"),
                "--config.init_checkpoint=/nonexistent/run")
  assert result.returncode == 2 and "no checkpoints in '/nonexistent/run'" in result.stderr
  assert "Traceback" not in result.stderr


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = _run("train.py", "--config", TINY, "--workdir", str(blocker / "run"))
  assert result.returncode == 2 and "workdir" in result.stderr and "Traceback" not in result.stderr
  assert blocker.read_text() == "not a directory"


def test_missing_config_file(tmp_path):
  result = _run("train.py", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path))
  assert result.returncode == 2 and "nope.py" in result.stderr


def test_eval_without_checkpoint(tmp_path):
  result = _run("eval.py", "--config", TINY, "--workdir", str(tmp_path))
  assert result.returncode == 2 and "no checkpoints" in result.stderr


def test_eval_writes_eval_json(finished_run):
  result = _run("eval.py", "--config", TINY, "--workdir", finished_run, "--config.num_steps=4")
  assert result.returncode == 0, result.stderr
  assert os.path.exists(os.path.join(finished_run, "eval.json"))
