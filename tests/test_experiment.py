"""What `Experiment` takes from other runs: a pretrained backbone's input normalisation."""

import json

import numpy as np
import pytest

from advjax import config as config_lib
from advjax import data, experiment
from advjax.errors import CheckpointError


def test_a_pretrained_backbone_keeps_the_normalisation_of_its_dataset(tmp_path):
  """A segmentation model on digit canvases with a digit classifier's backbone normalises like the classifier."""
  classifier = config_lib.base_config()
  classifier.data.name = "mnist_embedded"
  (tmp_path / "config.json").write_text(json.dumps(classifier.to_dict()))
  mean, std = experiment.backbone_normalisation(str(tmp_path))
  train_images = data.mnist_arrays()[0].astype(np.float64)
  np.testing.assert_allclose(mean, [train_images.mean()], rtol=1e-5)
  np.testing.assert_allclose(std, [train_images.std()], rtol=1e-5)
  canvases = data.mnist_seg_arrays()[0]
  assert abs(mean[0] - canvases.mean()) > 0.05  # The canvases' own statistics would differ.


def test_a_backbone_run_without_config_is_one_clear_error(tmp_path):
  """(A backbone run without checkpoints is refused before this: tests/test_cli.py.)"""
  with pytest.raises(CheckpointError, match="backbone_checkpoint.*config.json"):
    experiment.backbone_normalisation(str(tmp_path))
