"""AdvProp EfficientNet-B0 on ImageNet (Xie thesis, ch. 7, sec. 7.5.1).

`get_config('eps')` picks the PGD attacker's eps in 1..4 (default 1, the best
for B0 in table 7.2): n = eps + 1 steps (1 for eps = 1) of size 1. Training
follows EfficientNet's recipe: RMSProp (decay 0.9, momentum 0.9, eps 1e-3),
BN momentum 0.99, weight decay 1e-5, learning rate 0.256 per 4096 images
decayed by 0.97 every 2.4 epochs, 350 epochs at resolution 224.
Use `--config.model.name=efficientnet_b7 --config.data.image_size=600` etc.
for the larger variants (resolutions in `advjax.models.efficientnet.RESOLUTIONS`).
"""

from advjax.config import base_config
from advjax.training.objectives import advprop


def get_config(arg=None):
  eps = float(arg) if arg else 1.0
  c = base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = True
  c.model.name = "efficientnet_b0"
  c.model.activation = "silu"
  c.model.norm = "batchnorm:0.99"
  c.objective = "advprop"
  advprop.configure_attacker(c, eps, "pgd")
  c.batch_size = 4096
  c.num_epochs = 350
  c.optimizer.name = "rmsprop"
  c.optimizer.learning_rate = 0.256
  c.optimizer.decay = 0.9
  c.optimizer.momentum = 0.9
  c.optimizer.eps = 1e-3
  c.optimizer.weight_decay = 1e-5
  c.schedule.name = "piecewise"
  # 0.97 every 2.4 epochs as a piecewise schedule over the run.
  c.schedule.boundaries = tuple(round(2.4 * k, 1) for k in range(1, int(350 / 2.4) + 1))
  c.schedule.decay_factor = 0.97
  c.schedule.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.batch_size = 1000
  c.eval.split = "validation"
  return c
