"""The run directory (`advjax.run_dir`): one process per workdir, run files of the wrong kind, the shared read path."""

import os
import signal
import subprocess
import sys

import pytest

from advjax import run_dir
from advjax.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=ROOT)
HOLD = ("import sys, time\nfrom advjax import run_dir\nwith run_dir.lock(sys.argv[1], 'a training run'):\n"
        "  print('held', flush=True)\n  time.sleep(600)\n")


def _script(name, workdir, *flags):
  return subprocess.run([sys.executable, os.path.join(ROOT, name), "--config", os.path.join(ROOT, "configs/tiny.py"),
                         "--workdir", workdir, "--config.num_steps=2", *flags],
                        env=ENV, capture_output=True, text=True, timeout=300)


def test_a_workdir_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
  """Two processes on one workdir: the second stops with one line naming the first; a killed holder blocks nobody."""
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", HOLD, workdir], env=ENV, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    for script in ("train.py", "eval.py"):
      result = _script(script, workdir)
      assert result.returncode == 2, result.stderr
      lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
      assert len(lines) == 1 and f"is in use by a training run (pid {holder.pid} on " in lines[0], result.stderr
      assert "Traceback" not in result.stderr
    assert os.listdir(workdir) == [run_dir.LOCK_FILE]  # Nothing was written by the refused runs.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The operating system released the killed holder's lock; the file is a stale name only.
  with run_dir.lock(workdir, "a test"):
    with pytest.raises(CheckpointError, match=f"in use by a test \\(pid {os.getpid()} on "):
      with run_dir.lock(workdir, "another test"):
        pass
  with run_dir.lock(workdir, "a test"):  # Released at the end of the block.
    pass
