"""Universal adversarial training of a ResNet-50 on ImageNet (Shafahi et al., section 6).

The paper hardens ImageNet models against universal perturbations of
eps = 10 (L-inf, 0-255 units) with algorithm 3 and "the natural training
hyper-parameters"; here those of the standard ResNet-50 recipe: 90 epochs of
momentum SGD at 0.1 for a batch of 256, divided by 10 at epochs 30, 60 and
80, weight decay 1e-4, random-resized crops of 224 with flips. delta
ascends by the FGSM rule of eq. 6; `--config.objective=uat_simultaneous` is
the low-cost algorithm 4 (figure 7d).
"""

from advjax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = True
  c.model.name = "resnet50"
  c.objective = "uat_alternating"
  c.uat.step_rule = "sign"
  c.uat.eps = 10.0
  c.batch_size = 256
  c.num_epochs = 90
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (30.0, 60.0, 80.0)
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.eval.batch_size = 400  # Divides 10,000 and 50,000 and any device count up to 16.
  return c
