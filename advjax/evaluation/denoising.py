"""'denoise_figure': feature maps before and after a denoising block, clean and adversarial.

The thesis' figures 4.1 and 4.8 (Xie, ch. 4) show that an adversarial
perturbation that is barely visible in the image becomes large noise in the
feature maps, and that a denoising block suppresses it. This evaluator draws,
for a few held-out images, one row per image:

  image | features before the block | after | adversarial image | before | after

The block is one of the model's inserted denoising blocks (`block`, by its
position name, e.g. 'stage2_denoise'; default the first). The adversarial
image comes from PGD with the evaluator's settings (targeted toward a random
wrong class by default, as the thesis' attacks). The channel shown is, per
image, the one whose features change most under the attack before the block;
each panel is scaled to its own range. It needs the model in the context
(`EvalContext.model`) and writes `<out_dir>/<entry>.png`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from advjax import viz
from advjax.attacks import pgd as pgd_lib
from advjax.errors import ConfigError
from advjax.evaluation import base


def _features(model, variables, x) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{block position: (features in, features out)} of every denoising block for images x."""
  _, state = model.apply(variables, x, mutable=["intermediates"])
  flat = traverse_util.flatten_dict(state["intermediates"])
  blocks = {}
  for path, value in flat.items():
    blocks.setdefault(path[0], {})[path[-1]] = np.asarray(value[0])
  return {name: (v["features_in"], v["features_out"]) for name, v in blocks.items()
          if "features_in" in v and "features_out" in v}


def _normalise(maps: np.ndarray) -> np.ndarray:
  """Each [H, W] map to [0, 1] by its own range."""
  low = maps.min(axis=(-2, -1), keepdims=True)
  high = maps.max(axis=(-2, -1), keepdims=True)
  return (maps - low) / np.maximum(high - low, 1e-12)


def _to_panel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """An [h, w] map or [h, w, c] image as an [H, W, 3] panel (nearest-neighbour enlarged)."""
  image = image if image.ndim == 3 else image[..., None]
  image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  ry, rx = size[0] // image.shape[0], size[1] // image.shape[1]
  return np.repeat(np.repeat(image, ry, axis=0), rx, axis=1)


class DenoiseFigure(base.Evaluator):
  """'denoise_figure' (see the module docstring)."""

  @dataclasses.dataclass(frozen=True)
  class Args:
    """Attributes:
      num_images: rows of the figure.
      block: the block's position name ('' = the first denoising block).
      attack: the attack (`pgd.AttackConfig`); default the thesis' kind,
        targeted L-inf PGD-10 at eps 16 with step 2 and a random start.
    """
    num_images: int = 4
    block: str = ""
    attack: pgd_lib.AttackConfig = pgd_lib.pgd(16.0, step_size=2.0, num_steps=10, targeted=True)

    RENAMED: ClassVar[dict[str, str]] = {"eps": "attack.eps", "steps": "attack.num_steps",
                                         "step_size": "attack.step_size", "targeted": "attack.targeted"}

  def __init__(self, name, args, ctx):
    super().__init__(name, args, ctx)
    if ctx.model is None:
      raise ConfigError(f"config.evals.{name}: 'denoise_figure' needs the model in the evaluation context")

  def run(self, variables: Any) -> Iterator[tuple[str, Any]]:
    a = self.args
    batch = self.ctx.held_out()[0]
    x, y = jax.device_get((batch["image"][:a.num_images], batch["label"][:a.num_images]))
    x_adv = np.asarray(pgd_lib.attack(self.ctx.model_fn(variables), jnp.asarray(x), jnp.asarray(y),
                                      self.ctx.key(self.name), a.attack, task=self.ctx.task))
    clean = _features(self.ctx.model, variables, jnp.asarray(x))
    adv = _features(self.ctx.model, variables, jnp.asarray(x_adv))
    if not clean:
      raise ConfigError(f"config.evals.{self.name}: the model has no denoising block (model.insert_block)")
    block = a.block or sorted(clean)[0]
    if block not in clean:
      raise ConfigError(f"config.evals.{self.name}.block: no block {block!r}; blocks: {', '.join(sorted(clean))}")
    before, after = clean[block]
    before_adv, after_adv = adv[block]
    # Per image, the channel the attack changes most before the block.
    channel = np.argmax(np.mean(np.abs(before_adv - before), axis=(1, 2)), axis=-1)
    pick = lambda f: f[np.arange(len(x)), :, :, channel]  # noqa: E731
    size = (max(x.shape[1], before.shape[1]) * 4,) * 2
    rows = []
    for i in range(len(x)):
      maps = _normalise(np.stack([pick(before)[i], pick(after)[i], pick(before_adv)[i], pick(after_adv)[i]]))
      rows.append([_to_panel(x[i], size), _to_panel(maps[0], size), _to_panel(maps[1], size),
                   _to_panel(x_adv[i], size), _to_panel(maps[2], size), _to_panel(maps[3], size)])
    path = None
    if self.ctx.out_dir is not None and jax.process_index() == 0:
      path = viz.save_image_grid([np.stack(row) for row in rows], os.path.join(self.ctx.out_dir, f"{self.name}.png"))
    # How much the attack moves the features, before and after the block (the thesis' observation).
    noise_in = float(np.mean(np.abs(before_adv - before)) / max(np.mean(np.abs(before)), 1e-12))
    noise_out = float(np.mean(np.abs(after_adv - after)) / max(np.mean(np.abs(after)), 1e-12))
    yield "block", block
    yield "relative_feature_change_in", noise_in
    yield "relative_feature_change_out", noise_out
    yield "path", path
