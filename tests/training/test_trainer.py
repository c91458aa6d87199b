"""The training loop end to end on the embedded digits with a tiny convnet.

Covers the foundation's acceptance: one device equals eight step for step, a
run killed with SIGKILL and resumed equals an uninterrupted run bitwise,
SIGTERM leaves a usable checkpoint, two processes on localhost equal one
process with the same global batch, and the run directory holds metrics,
TensorBoard events, the config and a summary.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from advjax import data, experiment as experiment_lib, run_dir, runs
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _final_state(workdir, config):
  experiment = experiment_lib.Experiment(config, jax.devices()[:1])
  return run_dir.Checkpointer(workdir, create=False).restore(experiment.init_state())[1]


def _final_params(workdir, config):
  return _final_state(workdir, config).params


def _losses(workdir):
  return np.array([r["loss"] for r in run_dir.read_metrics(workdir) if "loss" in r])


def _env(device_count):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
  env["PYTHONPATH"] = ROOT
  return env


def _train_cmd(workdir, *overrides):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
          "--workdir", str(workdir), *overrides]


pytestmark = pytest.mark.usefixtures("device_count_invariant_convolutions")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, device_count_invariant_convolutions):
  """The tiny run on all 8 devices, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  summary = runs.train_and_evaluate(tiny.get_config(), workdir)
  return workdir, summary


def test_run_directory_holds_everything(reference_run):
  workdir, summary = reference_run
  records = run_dir.read_metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
  assert {"loss", "accuracy", "learning_rate"} <= set(records[0])
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(summary))
  assert on_disk["device_count"] == 8 and on_disk["steps"] == 12 and on_disk["wall_time_s"] > 0
  assert on_disk["config"]["model"]["name"] == "convnet_tiny"
  # The end-of-training evaluation scored every held-out digit with the final model.
  state = _final_state(workdir, tiny.get_config())
  model = experiment_lib.Experiment(tiny.get_config(), jax.devices()[:1]).model
  _, _, x, y = data.mnist_arrays()
  predictions = np.argmax(np.asarray(model.apply(state.variables, x)), -1)
  assert on_disk["evals"]["clean"] == {"accuracy": float(np.mean(predictions == y)), "num_examples": len(y)}
  assert records[-1]["eval/clean/accuracy"] == on_disk["evals"]["clean"]["accuracy"]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert run_dir.Checkpointer(workdir, create=False).latest_step() == 12
  # The loss went down: the step really trains.
  losses = _losses(workdir)
  assert losses[-3:].mean() < losses[:3].mean()


def test_one_device_matches_eight_step_for_step(reference_run, tmp_path):
  workdir, _ = reference_run
  runs.train_and_evaluate(tiny.get_config(), str(tmp_path), devices=jax.devices()[:1])
  np.testing.assert_allclose(_losses(str(tmp_path)), _losses(workdir), rtol=1e-5)


def test_same_seed_gives_bitwise_identical_parameters(reference_run, tmp_path):
  workdir, _ = reference_run
  runs.train_and_evaluate(tiny.get_config(), str(tmp_path))
  config = tiny.get_config()
  jax.tree.map(np.testing.assert_array_equal, _final_params(str(tmp_path), config), _final_params(workdir, config))


def test_resume_after_sigkill_is_bitwise_equal(reference_run, tmp_path):
  """Kill a subprocess run once a mid-run checkpoint exists, restart it, compare with the reference."""
  workdir, _ = reference_run
  config = tiny.get_config()
  resumed = str(tmp_path / "resumed")
  # Slow the subprocess down with many steps between logs? No: checkpoint every 4 of 12 steps and
  # kill as soon as the first checkpoint is complete, which is well before the end.
  proc = subprocess.Popen(_train_cmd(resumed), env=_env(8), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = os.path.join(resumed, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  summary = runs.train_and_evaluate(config, resumed)
  assert summary["steps"] == 12
  jax.tree.map(np.testing.assert_array_equal, _final_params(resumed, config), _final_params(workdir, config))
  # The resumed run logged every step exactly once.
  assert [r["step"] for r in run_dir.read_metrics(resumed) if "loss" in r] == list(range(1, 13))


def test_sigterm_leaves_a_usable_checkpoint(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.Popen(_train_cmd(workdir, "--config.num_steps=100000", "--config.checkpoint_every_steps=100000"),
                          env=_env(8), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert "SIGTERM: saved checkpoint" in err
  step = run_dir.Checkpointer(workdir, create=False).latest_step()
  assert step is not None and step >= 1
  config = tiny.get_config()
  config.num_steps = 100000
  params = _final_params(workdir, config)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(reference_run, tmp_path):
  """jax.distributed on localhost: 2 processes x 4 CPU devices vs 1 process x 8, same global batch."""
  workdir, _ = reference_run
  two = str(tmp_path / "two")
  address = f"127.0.0.1:{_free_port()}"
  procs = [
      subprocess.Popen(_train_cmd(two, f"--config.distributed.coordinator_address={address}",
                                  "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
                       env=_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=400)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errors
  np.testing.assert_allclose(_losses(two), _losses(workdir), rtol=1e-5)
  with open(os.path.join(two, "summary.json")) as f:
    summary = json.load(f)
  assert summary["process_count"] == 2 and summary["device_count"] == 8


def test_fine_tuning_starts_from_another_runs_model(reference_run, tmp_path):
  """init_checkpoint loads params and batch statistics, whatever that run's optimiser was."""
  workdir, _ = reference_run
  config = tiny.get_config()
  config.optimizer.name = "adam"  # A different optimiser state structure than the reference run's.
  config.init_checkpoint = workdir
  experiment = experiment_lib.Experiment(config)
  state = experiment.init_from(workdir, experiment.init_state())
  jax.tree.map(np.testing.assert_array_equal, state.params, _final_params(workdir, tiny.get_config()))
  assert int(state.step) == 0


def test_restore_model_reads_only_the_model(reference_run):
  """Evaluation restores step and variables, whatever optimiser the run used."""
  workdir, _ = reference_run
  config = tiny.get_config()
  config.optimizer.name = "adam"
  step, variables = experiment_lib.Experiment(config).restore_model(workdir)
  assert step == 12
  jax.tree.map(np.testing.assert_array_equal, variables["params"], _final_params(workdir, tiny.get_config()))
