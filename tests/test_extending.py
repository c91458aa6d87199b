"""A new evaluator, objective, head and inserted block: each one module and one registration.

Everything here is registered from the test (with monkeypatch, so the
registries are restored) and then used through the ordinary path, the
experiment config -> `runs.train_and_evaluate` -> `runs.evaluate_run`, with
no edit to the trainer, eval.py or sweep.py.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import config as config_lib
from advjax import data, evaluation, models, runs
from advjax.errors import ConfigError
from advjax.experiment import Experiment
from advjax.models import blocks, layers
from advjax.training import objectives
from advjax.training.objectives import base
from configs import tiny


class MeanConfidence(evaluation.Evaluator):
  """'mean_confidence': the mean of the largest softmax probability on held-out data."""

  @dataclasses.dataclass(frozen=True)
  class Args:
    temperature: float = 1.0

  def run(self, variables):
    total = count = 0.0
    fn = self.ctx.model_fn(variables)
    for batch in self.ctx.held_out():
      p = jax.nn.softmax(fn(batch["image"]) / self.args.temperature)
      total += float(jnp.sum(jnp.max(p, -1) * batch["mask"]))
      count += float(jnp.sum(batch["mask"]))
    yield "confidence", total / count


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """`config.noise`, the block of 'noisy_erm'."""
  amplitude: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.amplitude <= 1.0:
      raise ConfigError(f"amplitude={self.amplitude!r} must be in [0, 1]")


class NoisyERM(base.LossObjective):
  """'noisy_erm': cross-entropy on images with uniform noise of +-`config.noise.amplitude` added."""

  BLOCK = "noise"
  Config = NoiseConfig

  def loss(self, params, model_state, batch, rng):
    noise_rng, dropout_rng = jax.random.split(rng)
    noise = jax.random.uniform(noise_rng, batch["image"].shape, minval=-1.0, maxval=1.0)
    images = jnp.clip(batch["image"] + self.block.amplitude * noise, 0.0, 1.0)
    logits, model_state = base.apply_train(self.model, params, model_state, images, dropout_rng)
    return jnp.mean(self.task.loss(logits, batch["label"])), (model_state, {"noisy_accuracy": jnp.mean(
        self.task.correct(logits, batch["label"]))})


class MLPHead(nn.Module):
  """'mlp': a hidden dense layer before the classifier."""
  num_classes: int
  dtype: str = "float32"
  needs_pooled = True

  @nn.compact
  def __call__(self, features, train, use_batch_stats, image_shape):
    h = nn.relu(layers.dense(16, name="head_hidden")(features.pooled))
    return layers.dense(self.num_classes, name="head_out")(h)

  def owns(self, key):
    return key.startswith("head_")


class Scale(nn.Module):
  """'scale': a learned per-channel scale, 1 at initialisation."""

  @nn.compact
  def __call__(self, x, use_batch_stats):
    return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


@pytest.fixture
def registered(monkeypatch):
  monkeypatch.setitem(evaluation.EVALUATORS, "mean_confidence", MeanConfidence)
  monkeypatch.setitem(objectives.OBJECTIVES, "noisy_erm", NoisyERM)
  monkeypatch.setitem(models.HEADS, "mlp", lambda *, num_classes, activation, norm, dtype, spec: MLPHead(
      num_classes=num_classes, dtype=dtype))
  monkeypatch.setitem(blocks.BLOCKS, "scale", lambda *args, norm, dtype, placement, name: Scale(name=name))


def test_registered_parts_train_and_evaluate_through_the_usual_path(registered, tmp_path):
  config = tiny.get_config()
  config.num_steps = 3
  config.objective = "noisy_erm"
  config.noise.amplitude = 0.1  # The objective's own block, in the base config once it is registered.
  config.model.head = "mlp"
  config.model.insert_block = "scale"
  config.model.insert_after = "stage2"
  config.evals.confidence = config_lib.eval_entry("mean_confidence", temperature=2.0)
  config.train_evals = ("clean", "confidence")
  workdir = str(tmp_path)
  summary = runs.train_and_evaluate(config, workdir)
  assert "noisy_accuracy" in summary["final_train_metrics"]
  experiment = Experiment(config)
  step, variables = experiment.restore_model(workdir)
  assert step == 3
  params = variables["params"]
  assert {"head_hidden", "head_out", "stage2_scale"} <= set(params) and "fc2" not in params
  assert not np.allclose(params["stage2_scale"]["scale"], 1.0)  # The block trained.
  # The evaluator's value, recomputed from the restored model on every held-out digit.
  _, _, x, _ = data.mnist_arrays()
  p = jax.nn.softmax(experiment.model.apply(variables, x) / 2.0)
  expected = float(np.mean(np.max(np.asarray(p), -1)))
  assert summary["evals"]["confidence"]["confidence"] == pytest.approx(expected, rel=1e-5)
  report = runs.evaluate_run(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["confidence"] == report["confidence"] == summary["evals"]["confidence"]


def test_an_inserted_block_starts_as_the_plain_model(registered):
  x = jnp.asarray(data.mnist_arrays()[2][:4])
  plain = models.create_model("convnet_tiny", num_classes=10)
  scaled = models.create_model("convnet_tiny", num_classes=10, insert_block="scale", insert_after="stages")
  variables = scaled.init(jax.random.key(0), x)
  assert {"stage1_scale", "stage2_scale", "stage3_scale"} <= set(variables["params"])
  without = {**variables, "params": {k: v for k, v in variables["params"].items() if not k.endswith("_scale")}}
  np.testing.assert_array_equal(scaled.apply(variables, x), plain.apply(without, x))
  with pytest.raises(Exception, match="unknown position"):
    models.create_model("convnet_tiny", num_classes=10, insert_block="scale", insert_after="layer9_9")
