"""Universal adversarial training of a WRN 32-10 on CIFAR-10 (Shafahi et al., section 4).

The paper's CIFAR setting: eps = 8 (L-inf, 0-255 units), batch 128, 80,000
steps of momentum SGD with learning rate 0.1, divided by 10 at steps 40,000
and 60,000; delta ascends by the FGSM rule of eq. 6, the paper's strongest
(table 1, uFGSM). Algorithm 3 by default; `--config.objective=uat_simultaneous`
is the low-cost algorithm 4.

Schedules are written in epochs. The pipeline drops the last partial batch,
so an epoch is 50,000 // 128 = 390 steps, and the step boundaries 40,000 and
60,000 are 40,000 / 390 and 60,000 / 390 epochs (the optimiser rounds
epochs * 390 back to exactly those steps).
"""

from advjax.config import base_config

STEPS_PER_EPOCH = 50_000 // 128


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.name = "cifar10"
  c.data.augment = True
  c.model.name = "wrn32_10"
  c.objective = "uat_alternating"
  c.uat.step_rule = "sign"
  c.uat.eps = 8.0
  c.batch_size = 128
  c.num_steps = 80_000
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (40_000 / STEPS_PER_EPOCH, 60_000 / STEPS_PER_EPOCH)
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.eval.batch_size = 400  # Divides 10,000 and 50,000 and any device count up to 16.
  return c
