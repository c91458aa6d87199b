"""The paper's ImageNet-subset Pareto sweep (figure 4): s in {1, 32} x eps x sigma, fine-tuning WRN-50-2."""

import ml_collections

from configs import shared_at_imagenet


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.experiment = shared_at_imagenet.get_config()
  c.erm = shared_at_imagenet.get_config()
  # ERM pre-training: 100 epochs of SGD, lr 0.1 divided by 10 every 30 epochs.
  c.erm.objective = "erm"
  c.erm.adversarial.heap_size = 1
  c.erm.init_checkpoint = ""
  c.erm.num_epochs = 100
  c.erm.optimizer.learning_rate = 0.1
  c.erm.schedule.boundaries = (30.0, 60.0, 90.0)
  c.step_ratio = 0.4
  c.grid = ml_collections.ConfigDict()
  c.grid.sharedness = (1, 32)
  c.grid.eps = (2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 22.0, 26.0)
  c.grid.adv_weight = (0.5, 1.0)
  return c
