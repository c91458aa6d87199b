"""Models of other runs, rebuilt from their run directories alone.

A run directory holds the config it was trained with (config.json) and its
checkpoints. From them (read through `advjax.run_dir`), without the config
that is running now:

  input_normalisation  the input mean and std the run's network learned under
  load_model           the network and the variables of its latest checkpoint

`Experiment` takes a pretrained backbone's normalisation from here; the
'synthesis' evaluator loads an independent classifier with `load_model`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from advjax import data, models, run_dir


def input_normalisation(workdir: str, purpose: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The input mean and std a run's network was trained with.

  Those of its dataset, or, when the run itself started from a pretrained
  backbone, the backbone run's (followed to the first run without one): a
  backbone keeps the normalisation it learned under, e.g. the MNIST digits'
  statistics for a segmentation model on digit canvases, as torchvision's
  pretrained backbones keep ImageNet's; its BatchNorm statistics are only
  right for those inputs.

  Raises:
    CheckpointError: a run in the chain has no readable config.json.
    ConfigError, DataError: its dataset is unknown or not prepared here.
  """
  seen = set()
  while True:
    config = run_dir.read_config(workdir, purpose)
    seen.add(os.path.realpath(workdir))
    backbone = config.get("model", {}).get("backbone_checkpoint", "")
    if not backbone or os.path.realpath(backbone) in seen:
      info = data.get_info(ml_collections.ConfigDict(config["data"]))
      return info.mean, info.std
    workdir = backbone


def load_model(workdir: str, purpose: str) -> tuple[models.Network, dict[str, Any], data.DatasetInfo]:
  """A run's network, rebuilt from its config.json, and the variables of its latest checkpoint.

  Args:
    workdir: the run directory.
    purpose: what the model is loaded for, named in errors.

  Returns:
    (network, variables {'params', 'batch_stats', ...} without auxiliary BN
     sets, DatasetInfo of the run's data).

  Raises:
    CheckpointError: no readable config.json, or no checkpoint that fits the network.
    ConfigError, DataError: its model or dataset is unknown here.
  """
  config = run_dir.read_config(workdir, purpose)
  info = data.get_info(ml_collections.ConfigDict(config["data"]))
  mean, std = input_normalisation(workdir, purpose)
  model = models.from_config(config.get("model", {}), num_classes=info.num_classes, mean=mean, std=std)
  key = jax.random.key(0)
  shapes = jax.eval_shape(lambda: model.init({"params": key, "dropout": key},
                                             jnp.zeros((1, *info.image_shape), jnp.float32), train=False))
  return model, run_dir.read_variables(workdir, shapes)[1], info
