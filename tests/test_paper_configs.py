"""The papers' large-scale configs build their model and run one training step on mock data.

tfds' `mock_data` stands in for the datasets (nothing is downloaded); the
models are built at full size but evaluated abstractly where a real step
would not fit the test budget (ImageNet-scale networks), and stepped for real
where it does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import config as config_lib
from advjax import models
from configs import denoise_imagenet


@pytest.mark.parametrize("arg,params", [("resnet152", 60_192_808), ("resnext101", 88_791_336)])
def test_denoising_imagenet_configs_build_their_models(arg, params):
  config = denoise_imagenet.get_config(arg)
  config_lib.validate(config, num_devices=8)
  model = models.create_model(config.model.name, num_classes=1000, insert_block=config.model.insert_block,
                              insert_after=config.model.insert_after)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  own = sum(leaf.size for path, leaf in flat if "denoise" not in str(path[0]))
  blocks = {str(path[0].key) for path, _ in flat if "denoise" in str(path[0])}
  assert own == params  # torchvision's ResNet-152 / ResNeXt-101 32x8d.
  assert blocks == {"stage1_denoise", "stage2_denoise", "stage3_denoise", "stage4_denoise"}


def test_universality_cifar10_config_has_the_papers_settings_and_trains_one_step(tmp_path):
  from advjax import runs
  from configs import universality_cifar10

  config = universality_cifar10.get_config()
  config_lib.validate(config, num_devices=8)
  a, e = config.attack, config.evals
  # Sec. 2: BI from xi_0 = 0, eps 4, alpha 1, 10 iterations, predicted labels, sigma = 0 (adv_weight 1).
  assert (a.eps, a.step_size, a.num_steps, a.init, a.labels) == (4.0, 1.0, 10, "zero", "predicted")
  assert (config.model.name, config.objective, config.adv_weight) == ("preact_resnet18", "pgd_at", 1.0)
  assert config.checkpoint_every_steps == 50_000 // config.batch_size and config.keep_checkpoints >= 252
  assert universality_cifar10.clean_config().num_epochs == 200
  # Appendix D: eps 10, alpha 2.5, m 128, K 10, 200 iterations (the classifier's and the detector's).
  u, d = e.universal_epochs, e.detection
  assert (u.eps, u.step_size, u.universal_batch, u.grad_batches, u.iterations) == (10.0, 2.5, 128, 10, 200)
  assert (d.universal_eps, d.universal_step, d.universal_batch, d.grad_batches, d.iterations) == (
      10.0, 2.5, 128, 10, 200)
  assert d.universal_target == "adversarial" and tuple(d.detector_features) == (96, 192, 192)
  # Appendices A-C: 256 inputs; 1024 perturbations on 5000 other inputs at epochs 0, 1, 15, 251.
  assert e.stability.max_examples == e.transfer.max_examples == 256
  assert tuple(e.transfer.epochs) == (0, 5, 15, 51, 251)
  assert (e.sharedness.max_examples, e.sharedness.num_other, tuple(e.sharedness.epochs)) == (1024, 5000, (0, 1, 15, 251))
  for entry in (e.stability, e.transfer, e.sharedness, e.destruction, e.detection):
    assert (entry.eps, entry.step_size, entry.steps) == (4.0, 1.0, 10)
  # One step of the full-size network on mock CIFAR-10, from scratch (no clean run to start from).
  config.init_checkpoint = ""
  config.num_steps, config.batch_size, config.eval.batch_size, config.eval.num_examples = 1, 4, 4, 4
  with tfds.testing.mock_data(num_examples=8):
    summary = runs.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  metrics = summary["final_train_metrics"]
  assert summary["steps"] == 1 and metrics["finite"] == 1.0 and np.isfinite(metrics["loss"]) and metrics["loss"] > 0
  assert summary["evals"]["clean"]["num_examples"] == 4
