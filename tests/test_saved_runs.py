"""What is read from other runs' directories: a pretrained backbone's input normalisation (`advjax.saved_runs`)."""

import json

import numpy as np
import pytest

from advjax import config as config_lib
from advjax import data, saved_runs
from advjax.errors import CheckpointError


def test_a_pretrained_backbone_keeps_the_normalisation_of_its_dataset(tmp_path):
  """A segmentation model on digit canvases with a digit classifier's backbone normalises like the classifier."""
  classifier = config_lib.base_config()
  classifier.data.name = "mnist_embedded"
  (tmp_path / "config.json").write_text(json.dumps(classifier.to_dict()))
  mean, std = saved_runs.input_normalisation(str(tmp_path), "model.backbone_checkpoint")
  train_images = data.mnist_arrays()[0].astype(np.float64)
  np.testing.assert_allclose(mean, [train_images.mean()], rtol=1e-5)
  np.testing.assert_allclose(std, [train_images.std()], rtol=1e-5)
  canvases = data.mnist_seg_arrays()[0]
  assert abs(mean[0] - canvases.mean()) > 0.05  # The canvases' own statistics would differ.


def test_a_backbone_run_without_config_is_one_clear_error(tmp_path):
  """(A backbone run without checkpoints is refused before this: tests/test_cli.py.)"""
  with pytest.raises(CheckpointError, match="backbone_checkpoint.*config.json"):
    saved_runs.input_normalisation(str(tmp_path), "model.backbone_checkpoint")


def test_a_run_on_a_backbone_normalises_like_the_backbone(tmp_path):
  """A frozen-backbone run on canvases (itself on a digit classifier's backbone) passes the digits' statistics on."""
  classifier, seg = config_lib.base_config(), config_lib.base_config()
  classifier.data.name = "mnist_embedded"
  seg.data.name = "mnist_seg_embedded"
  seg.model.backbone_checkpoint = str(tmp_path / "classifier")
  for name, config in (("classifier", classifier), ("seg", seg)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config.to_dict()))
  assert (saved_runs.input_normalisation(str(tmp_path / "seg"), "x")
          == saved_runs.input_normalisation(str(tmp_path / "classifier"), "x"))
  seg.model.backbone_checkpoint = ""
  (tmp_path / "seg" / "config.json").write_text(json.dumps(seg.to_dict()))
  canvases = data.get_info(seg.data)
  assert saved_runs.input_normalisation(str(tmp_path / "seg"), "x") == (canvases.mean, canvases.std)
