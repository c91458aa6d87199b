"""The paper's CIFAR-10 Pareto sweep (figure 3): s in {1, 8, 64} x eps x sigma, fine-tuning ResNet-20."""

import ml_collections

from configs import erm_cifar10, shared_at_cifar10


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.experiment = shared_at_cifar10.get_config()
  c.erm = erm_cifar10.get_config()
  c.step_ratio = 0.5
  c.grid = ml_collections.ConfigDict()
  c.grid.sharedness = (1, 8, 64)
  c.grid.eps = (2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 22.0, 26.0)
  c.grid.adv_weight = (0.3, 0.5, 0.7, 0.9)
  return c
