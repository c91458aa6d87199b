"""The papers' large-scale configs build their model and run one training step on mock data.

tfds' `mock_data` stands in for the datasets (nothing is downloaded); the
models are built at full size but evaluated abstractly where a real step
would not fit the test budget (ImageNet-scale networks), and stepped for real
where it does.
"""

import jax
import jax.numpy as jnp
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
