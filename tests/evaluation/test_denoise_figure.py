"""'denoise_figure': the features around a denoising block, clean and attacked, as a PNG."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advjax import attacks, data, evaluation, tasks
from advjax.errors import ConfigError
from advjax.evaluation import denoising
from advjax.models import create_model


@pytest.fixture(scope="module")
def setup():
  model = create_model("convnet_tiny", num_classes=10, insert_block="denoise:mean", insert_after="stage1,stage2")
  x = jnp.asarray(data.mnist_arrays()[2][:8])
  y = jnp.asarray(data.mnist_arrays()[3][:8])
  variables = model.init(jax.random.key(0), x[:1])
  # A trained-like block: non-zero BN scale, so the block changes the features.
  def trained(path, value):
    names = [str(getattr(entry, "key", "")) for entry in path]
    block_scale = names[-2:] == ["bn", "scale"] and any(n.endswith("_denoise") for n in names)
    return jnp.full_like(value, 0.7) if block_scale else value

  variables = jax.tree_util.tree_map_with_path(trained, variables)
  return model, variables, x, y


def _ctx(model, out_dir, x, y):
  return evaluation.EvalContext(
      task=tasks.Classification(10), model_fn=lambda v: attacks.make_logits_fn(model, v),
      held_out=lambda: [{"image": x, "label": y, "mask": jnp.ones(8)}], train_stream=None, image_shape=(28, 28, 1),
      rng=jax.random.key(1), out_dir=out_dir, model=model)


def test_figure_shows_the_block_and_measures_the_feature_noise(setup, tmp_path):
  model, variables, x, y = setup
  args = denoising.DenoiseFigure.Args(num_images=3, block="stage2_denoise",
                                      attack=attacks.pgd.pgd(32.0, step_size=16.0, num_steps=3, targeted=True))
  ctx = _ctx(model, str(tmp_path), x, y)
  values = dict(denoising.DenoiseFigure("fig", args, ctx).run(variables))
  assert values["block"] == "stage2_denoise"
  path = os.path.join(str(tmp_path), "fig.png")
  assert values["path"] == path and os.path.getsize(path) > 0
  width, height = Image.open(path).size
  assert width > height > 0  # Three rows of six panels.
  # The noise measures equal a direct computation through the captured features.
  x_adv = attacks.pgd.attack(attacks.make_logits_fn(model, variables), x[:3], y[:3], ctx.key("fig"),
                             attacks.pgd.pgd(32.0, step_size=16.0, num_steps=3, targeted=True),
                             task=tasks.Classification(10))
  clean = denoising._features(model, variables, x[:3])["stage2_denoise"]
  adv = denoising._features(model, variables, x_adv)["stage2_denoise"]
  expected = np.mean(np.abs(adv[0] - clean[0])) / np.mean(np.abs(clean[0]))
  assert values["relative_feature_change_in"] == pytest.approx(float(expected), rel=1e-5)
  assert values["relative_feature_change_out"] != values["relative_feature_change_in"]


def test_unknown_block_and_missing_model_are_config_errors(setup, tmp_path):
  model, variables, x, y = setup
  args = denoising.DenoiseFigure.Args(num_images=2, block="stage9_denoise", attack=attacks.pgd.pgd(num_steps=1))
  with pytest.raises(ConfigError, match="stage9_denoise"):
    dict(denoising.DenoiseFigure("fig", args, _ctx(model, str(tmp_path), x, y)).run(variables))
  ctx = _ctx(model, str(tmp_path), x, y)
  ctx.model = None
  with pytest.raises(ConfigError, match="needs the model"):
    denoising.DenoiseFigure("fig", args, ctx)
