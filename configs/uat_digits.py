"""Universal adversarial training on the embedded MNIST digits, CPU-sized (minutes on 2 cores).

The CIFAR recipe of Shafahi et al. (configs/uat_cifar10_wrn.py) scaled down:
the small convnet of the universality paper, 6 epochs of 4,000 digits with
momentum SGD whose rate drops 10x at half and three quarters of the run (the
paper's 40k and 60k of 80k steps), and delta ascending by the FGSM rule of
eq. 6 inside the usual MNIST L-inf ball, eps = 0.3 (76.5 in 0-255 units).
"""

from advjax.attacks import universal
from advjax.config import base_config, eval_entry


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "convnet"
  c.objective = "uat_alternating"
  c.uat.step_rule = "sign"
  c.uat.eps = 0.3 * 255
  c.batch_size = 64
  c.num_epochs = 6
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (3.0, 4.5)
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 25
  c.checkpoint_every_steps = 100
  c.eval.batch_size = 200
  # Evaluation as in the paper's table 1: accuracy on the held-out digits with the
  # strongest universal perturbation found by the SGD attack (algorithm 2, sign
  # rule, step 4, 250 iterations of 32 training digits = 2 epochs) at eps = 0.3.
  # eval.py with this config also measures ERM or PGD-trained runs of the convnet.
  c.eval.output_file = "eval_universal.json"
  c.evals.universal = eval_entry(
      "universal", eps=(0.3 * 255,), batch_size=32,
      universal=universal.uat_config(eps=0.3 * 255, step_size=4.0, num_steps=250))
  return c
