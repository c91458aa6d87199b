"""Figures: perturbation npy/PNG, image grids and Pareto fronts are valid files."""

import numpy as np
from PIL import Image

from advjax import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  return np.asarray(Image.open(path))


def test_save_perturbation_writes_raw_and_amplified(tmp_path):
  eps = 10 / 255
  xi = np.zeros((8, 8, 1), np.float32)
  xi[0, 0], xi[0, 1] = eps, -eps
  npy, png = viz.save_perturbation(xi, str(tmp_path / "sub" / "xi"), eps=eps, scale=2)
  np.testing.assert_array_equal(np.load(npy, allow_pickle=False), xi)
  pixels = _png(png)
  assert pixels.shape == (16, 16)
  # +eps -> white, -eps -> black, 0 -> mid-grey, as in the papers' figures.
  assert pixels[0, 0] == 255 and pixels[0, 2] == 0 and pixels[4, 4] in (127, 128)


def test_image_grid_and_pareto(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(4, 6, 6, 3)).astype(np.float32)
  delta = rng.uniform(-0.1, 0.1, size=x.shape).astype(np.float32)
  path = viz.save_image_grid([x, np.clip(x + delta, 0, 1), viz.amplify(delta, 0.1)],
                             str(tmp_path / "grid.png"), padding=1)
  assert _png(path).shape == (3 * 7 + 1, 4 * 7 + 1, 3)

  points = [dict(heap_size=s, clean_accuracy=a, eps_uni=e)
            for s, a, e in [(1, 0.93, 15.0), (1, 0.90, 30.0), (1, 0.91, 20.0),
                            (64, 0.93, 22.7), (64, 0.90, 44.1)]]
  path = viz.plot_pareto(points, str(tmp_path / "pareto.png"), delta=0.75)
  assert _png(path).ndim == 3
  # The front keeps only non-dominated models.
  front = viz.pareto_front([(0.93, 15.0), (0.90, 30.0), (0.89, 20.0)])
  assert front == [(0.90, 30.0), (0.93, 15.0)]
