"""Faults injected into real runs: damaged checkpoints, divergence, signals, cut files, failed writes.

Each test reproduces a failure seen in live runs and checks the documented
behaviour (README, "Failure behaviour"): nothing is lost, nothing wrong is
reported as a result, and every problem is one clear error.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from advjax import run_dir, runs
from advjax.errors import CheckpointError, ConfigError, NonFiniteError
from advjax.experiment import Experiment
from advjax.training import objectives
from advjax.training.objectives import erm
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**fields):
  config = tiny.get_config()
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 3
  for field, value in fields.items():
    parent, _, leaf = field.rpartition(".")
    (config if not parent else config[parent])[leaf] = value
  return config


def _params(workdir, config):
  experiment = Experiment(config, jax.devices()[:1])
  return run_dir.Checkpointer(workdir, create=False).restore(experiment.init_state())


def _snapshot(directory):
  out = {}
  for base, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(base, name), "rb") as f:
        out[os.path.relpath(os.path.join(base, name), directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished 12-step run (checkpoints at 4, 8, 12), kept read-only by the tests that copy it."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  runs.train_and_evaluate(_config(), workdir)
  return workdir


def _copy(reference, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  return workdir


def _damage_array_data(workdir, step, every=None):
  """Overwrites bytes of each data file of checkpoint `step`'s arrays, keeping their sizes.

  The arrays' bytes are in the per-process OCDBT databases' data files
  (`ocdbt.process_*/d/`); which file holds which array, and how many files
  there are, depends on the writer's timing. Some of those files hold only
  B-tree nodes that the merged database no longer reads, where damage is
  harmless (damaging only the checkpoint's largest file once let it restore
  intact in a CI run), so every file is damaged.

  Args:
    workdir: the run directory.
    step: which checkpoint.
    every: None to overwrite 32 bytes in the middle of each file, which lands
      inside an array's values (a restore reads them but their checksum no
      longer matches); or a stride: 16 bytes at every `every`, which damages
      every array of more than `every` bytes, so that a restore of only some
      fields (the parameters) also finds damage.
  """
  root = os.path.join(workdir, "checkpoints", str(step), run_dir.checkpoints.STATE_ITEM)
  paths = [os.path.join(base, name) for base, _, names in os.walk(root) for name in names
           if os.path.basename(os.path.dirname(base)).startswith("ocdbt.process_") and os.path.basename(base) == "d"]
  assert paths, f"no OCDBT data files under {root}"
  for path in paths:
    size = os.path.getsize(path)
    spots = [(size // 2, 32)] if every is None else [(offset, 16) for offset in range(0, size - 16, every)]
    with open(path, "r+b") as f:
      for offset, length in spots:
        f.seek(offset)
        f.write(b"\xff" * length)
    assert os.path.getsize(path) == size


def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_resumes_bitwise(reference, tmp_path, capfd):
  workdir = _copy(reference, tmp_path)
  _damage_array_data(workdir, 12)
  config = _config()
  # The run's newest checkpoint no longer verifies: the run resumes from step 8 and retrains to 12.
  os.remove(os.path.join(workdir, run_dir.SUMMARY_FILE))
  summary = runs.train_and_evaluate(config, workdir)
  err = capfd.readouterr().err
  assert "checkpoint 12" in err and "damaged" in err
  assert os.path.isdir(os.path.join(workdir, run_dir.DAMAGED_DIR, "12"))
  step, state = _params(workdir, config)
  _, ref = _params(reference, config)
  assert step == 12 and summary["steps"] == 12
  jax.tree.map(np.testing.assert_array_equal, state.params, ref.params)
  # Each step is logged once, the retrained ones included.
  assert [r["step"] for r in run_dir.read_metrics(workdir) if "loss" in r] == list(range(1, 13))


def test_evaluation_reads_around_a_damaged_checkpoint(reference, tmp_path, capfd):
  workdir = _copy(reference, tmp_path)
  _damage_array_data(workdir, 12, every=256)
  step, _ = Experiment(_config()).restore_model(workdir)
  assert step == 8 and "checkpoint 12" in capfd.readouterr().err
  with pytest.raises(CheckpointError, match="damaged"):
    run_dir.checkpoints.read(workdir, {"params": _params(reference, _config())[1].params}, step=12)


class _PoisonedERM(erm.ERM):
  """ERM whose step 3 (state.step == 2) produces NaN parameters."""

  def train_step(self, state, batch):
    new, metrics = super().train_step(state, batch)
    poison = jnp.where(state.step == 2, jnp.nan, 0.0)
    return new.replace(params=jax.tree.map(lambda p: p + poison, new.params)), metrics


def test_divergence_stops_the_run_before_anything_of_it_is_saved(tmp_path, monkeypatch):
  monkeypatch.setitem(objectives.OBJECTIVES, "poisoned", _PoisonedERM)
  config = _config(objective="poisoned", checkpoint_every_steps=1, num_steps=6)
  workdir = str(tmp_path)
  with pytest.raises(NonFiniteError, match="step 3") as error:
    runs.train_and_evaluate(config, workdir)
  assert "newest checkpoint is step 2" in str(error.value)
  assert run_dir.latest_step(workdir) == 2
  assert max(r["step"] for r in run_dir.read_metrics(workdir)) == 2
  assert not os.path.exists(os.path.join(workdir, run_dir.SUMMARY_FILE))
  step, state = _params(workdir, config)
  assert step == 2 and all(np.isfinite(p).all() for p in jax.tree.leaves(state.params))
  # Diverging before any checkpoint: the message says there is none.
  config.checkpoint_every_steps = 100
  with pytest.raises(NonFiniteError, match="no checkpoint was saved yet"):
    runs.train_and_evaluate(config, str(tmp_path / "fresh"))


def test_divergence_can_be_skipped(tmp_path, monkeypatch):
  monkeypatch.setitem(objectives.OBJECTIVES, "poisoned", _PoisonedERM)
  config = _config(objective="poisoned", num_steps=6, nonfinite="skip")
  summary = runs.train_and_evaluate(config, str(tmp_path))
  records = [r for r in run_dir.read_metrics(str(tmp_path)) if "loss" in r]
  assert [r["finite"] for r in records] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
  _, state = _params(str(tmp_path), config)
  assert int(state.step) == 6 and all(np.isfinite(p).all() for p in jax.tree.leaves(state.params))
  assert np.isfinite(summary["evals"]["clean"]["accuracy"])


def test_resuming_with_fewer_steps_is_refused_and_a_finished_run_is_left_alone(reference, tmp_path, capfd):
  workdir = _copy(reference, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(CheckpointError, match="step 12, beyond this config's 8 steps"):
    runs.train_and_evaluate(_config(num_steps=8), workdir)
  assert _snapshot(workdir) == before
  with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
    saved = json.load(f)
  assert runs.train_and_evaluate(_config(), workdir) == saved
  assert "finished at step 12: nothing to train" in capfd.readouterr().err
  assert _snapshot(workdir) == before


def test_damaged_checkpoint_metadata_is_read_around_by_evaluation_and_fine_tuning(reference, tmp_path, capfd):
  """Overwritten metadata can read as another tree: every reader falls back to the newest checkpoint that verifies."""
  workdir = _copy(reference, tmp_path)
  with open(os.path.join(workdir, "checkpoints", "12", run_dir.checkpoints.STATE_ITEM, "_METADATA"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(2000))
  before = _snapshot(workdir)
  assert runs.evaluate_run(_config(), workdir)["step"] == 8
  assert "checkpoint 12" in capfd.readouterr().err
  # Fine-tuning from it starts from checkpoint 8's model, and the source run is left as it was.
  experiment = Experiment(_config(init_checkpoint=workdir), jax.devices()[:1])
  tuned = experiment.init_from(workdir, experiment.init_state())
  _, at_8 = run_dir.read_variables(reference, tuned.variables, step=8)
  jax.tree.map(np.testing.assert_array_equal, tuned.params, at_8["params"])
  assert "checkpoint 12" in capfd.readouterr().err
  # Its checkpoints, the damaged one included, stay as they were: another run is read, not tidied.
  assert {k: v for k, v in _snapshot(workdir).items() if k.startswith("checkpoints")} == {
      k: v for k, v in before.items() if k.startswith("checkpoints")}


def test_an_init_checkpoint_of_another_model_is_one_error_that_leaves_nothing(reference, tmp_path):
  workdir = str(tmp_path / "new")
  with pytest.raises(CheckpointError, match="holds another model"):
    runs.train_and_evaluate(_config(init_checkpoint=reference, **{"model.name": "resnet20_tiny"}), workdir)
  assert not os.path.exists(workdir)


def test_a_bad_evaluation_split_is_refused_before_training(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match="has splits 'train' and 'test', not 'validation'"):
    runs.train_and_evaluate(_config(**{"eval.split": "validation"}), workdir)
  assert not os.path.exists(workdir)


def test_eval_refuses_another_model_unless_asked(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  before = _snapshot(workdir)
  other = _config(**{"model.activation": "silu"})
  with pytest.raises(ConfigError, match="model.activation 'relu' -> 'silu'"):
    runs.evaluate_run(other, workdir)
  assert _snapshot(workdir) == before
  other.eval.cross_evaluate = True
  assert runs.evaluate_run(other, workdir)["step"] == 12


def test_cut_run_files_do_not_break_the_next_run(reference, tmp_path):
  # A metrics record cut by a kill is dropped on resume; each step is logged once.
  workdir = _copy(reference, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
  os.remove(os.path.join(workdir, run_dir.SUMMARY_FILE))
  with open(os.path.join(workdir, run_dir.METRICS_FILE), "a") as f:
    f.write('{"step": 13, "loss": 0.')
  runs.train_and_evaluate(_config(), workdir)
  assert [r["step"] for r in run_dir.read_metrics(workdir) if "loss" in r] == list(range(1, 13))
  # An empty config.json (a kill while it was written, before any checkpoint) is rewritten.
  fresh = str(tmp_path / "fresh")
  os.makedirs(fresh)
  open(os.path.join(fresh, run_dir.CONFIG_FILE), "w").close()
  runs.train_and_evaluate(_config(num_steps=2), fresh)
  with open(os.path.join(fresh, run_dir.CONFIG_FILE)) as f:
    assert json.load(f)["num_steps"] == 2
  # With checkpoints, an unreadable config.json, or one that is not a JSON object, is one error.
  for text in ("", "[]", '"a string"'):
    with open(os.path.join(fresh, run_dir.CONFIG_FILE), "w") as f:
      f.write(text)
    with pytest.raises(CheckpointError, match="config.json is unreadable or not a JSON object"):
      runs.train_and_evaluate(_config(num_steps=2), fresh)
  # Read for another purpose (a pretrained backbone), it is the same kind of error.
  with pytest.raises(CheckpointError, match="not a JSON object"):
    run_dir.read_config(fresh, "model.backbone_checkpoint")


class _FailingERM(erm.ERM):
  """ERM whose step cannot be built (as when the first step exhausts memory)."""

  def train_step(self, state, batch):
    raise MemoryError("out of memory while compiling the first step")


def test_a_run_that_fails_before_its_first_step_leaves_no_config(tmp_path, monkeypatch):
  monkeypatch.setitem(objectives.OBJECTIVES, "failing", _FailingERM)
  workdir = str(tmp_path)
  with pytest.raises(MemoryError):
    runs.train_and_evaluate(_config(objective="failing", num_steps=2), workdir)
  assert not os.path.exists(os.path.join(workdir, run_dir.CONFIG_FILE))
  runs.train_and_evaluate(_config(num_steps=2), workdir)  # The corrected run is not "a different run".


def test_a_failed_save_is_one_error_within_a_step_and_the_previous_checkpoint_survives(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  original = ocp.CheckpointManager.save
  calls = []

  def full_disk(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) > 1:
      raise OSError(28, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(CheckpointError, match="No space left on device") as error:
    runs.train_and_evaluate(_config(num_steps=12), workdir)
  assert os.path.join(workdir, "checkpoints") in str(error.value)
  monkeypatch.setattr(ocp.CheckpointManager, "save", original)
  step, state = _params(workdir, _config())
  assert step == 4 and all(np.isfinite(p).all() for p in jax.tree.leaves(state.params))


def _free_space(monkeypatch, free_bytes):
  """The checkpoint directory's disk reports `free_bytes()` bytes free (the real disk is left alone)."""
  real = shutil.disk_usage

  def usage(path):
    total, used, _ = real(path)
    return type(real(path))(total, used, free_bytes())

  monkeypatch.setattr(run_dir.checkpoints.shutil, "disk_usage", usage)


def test_a_disk_without_room_for_a_checkpoint_is_found_before_training(tmp_path, monkeypatch):
  _free_space(monkeypatch, lambda: 64 * 1024)
  workdir = str(tmp_path / "run")
  with pytest.raises(CheckpointError, match=r"cannot save checkpoint any: .* has 64\.0 KiB free, .* needs about"):
    runs.train_and_evaluate(_config(num_steps=12), workdir)
  assert not os.path.exists(os.path.join(workdir, run_dir.CONFIG_FILE))  # Not a step was trained.


def test_a_disk_that_fills_up_is_reported_at_the_save_it_stops(tmp_path, monkeypatch):
  """Room at the start and for checkpoint 4, not for 8: the error names step 8 and leaves checkpoint 4 intact."""
  free = [10**12]
  _free_space(monkeypatch, lambda: free[0])
  original = run_dir.Checkpointer.save

  def save(self, step, state, **kwargs):
    original(self, step, state, **kwargs)
    free[0] = 64 * 1024  # The disk is full after checkpoint 4.

  monkeypatch.setattr(run_dir.Checkpointer, "save", save)
  workdir = str(tmp_path / "run")
  with pytest.raises(CheckpointError, match="cannot save checkpoint 8: .* free"):
    runs.train_and_evaluate(_config(num_steps=12), workdir)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  step, state = _params(workdir, _config())
  assert step == 4 and all(np.isfinite(p).all() for p in jax.tree.leaves(state.params))


def test_a_save_that_fails_in_the_background_is_reported_under_its_own_step(tmp_path, monkeypatch):
  """The writer thread's error surfaces at the next step's check, naming the save it broke; its leftovers go."""
  workdir = str(tmp_path / "run")
  original_save, original_check = ocp.CheckpointManager.save, ocp.CheckpointManager.check_for_errors
  broken = []

  def save(self, step, *args, **kwargs):
    if step == 8:  # As orbax's writer leaves a save that failed on a full disk.
      os.makedirs(os.path.join(self.directory, "8.orbax-checkpoint-tmp", "state.orbax-checkpoint-tmp"))
      broken.append(step)
      return True
    return original_save(self, step, *args, **kwargs)

  def check_for_errors(self):
    if broken:
      raise ValueError("RESOURCE_EXHAUSTED: Failed to write 25082 bytes: No space left on device")
    return original_check(self)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", check_for_errors)
  with pytest.raises(CheckpointError, match="saving checkpoint 8 in .* failed: RESOURCE_EXHAUSTED"):
    runs.train_and_evaluate(_config(num_steps=12), workdir)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]


def test_checkpoints_that_cannot_be_written_are_found_before_training(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("a file where the directory should be")
  with pytest.raises(CheckpointError, match="not writable"):
    runs.train_and_evaluate(_config(num_steps=2), str(workdir))
  assert sorted(os.listdir(workdir)) == [run_dir.LOCK_FILE, "checkpoints"]
  assert (workdir / run_dir.LOCK_FILE).read_text() == ""  # Released.


def _train_process(workdir, *overrides):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--config",
                           os.path.join(ROOT, "configs/tiny.py"), "--workdir", str(workdir), *overrides],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigterm_during_start_up_exits_0_with_nothing_saved(tmp_path):
  proc = _train_process(tmp_path / "run")
  time.sleep(1.0)  # Importing jax and flax: training has not started.
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert "nothing to save" in err and "Traceback" not in err
  assert run_dir.latest_step(str(tmp_path / "run")) is None


def test_sigterm_when_a_checkpoint_is_due_exits_0_with_that_step(tmp_path):
  workdir = tmp_path / "run"
  proc = _train_process(workdir, "--config.num_steps=100000", "--config.checkpoint_every_steps=1")
  deadline = time.time() + 240
  while time.time() < deadline and run_dir.latest_step(str(workdir)) is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert "SIGTERM: saved checkpoint at step" in err and "Traceback" not in err
  step = int(err.split("saved checkpoint at step ")[1].split(";")[0])
  assert run_dir.latest_step(str(workdir)) == step
