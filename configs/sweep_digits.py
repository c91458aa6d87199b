"""The Pareto sweep on the embedded digits: s in {1, 8, 32} x eps x sigma (hours on a CPU).

Same models and evaluation as configs/compare_digits.py over a grid like the
paper's figure 3, scaled to MNIST radii.
"""

from configs import compare_digits


def get_config(arg=None):
  del arg
  c = compare_digits.get_config()
  c.grid.sharedness = (1, 8, 32)
  c.grid.eps = (25.5, 51.0, 76.5, 102.0)
  c.grid.adv_weight = (0.3, 0.5, 0.7, 0.9)
  return c
