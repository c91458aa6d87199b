"""Shared adversarial training of ResNet-20 (64-128-256) on CIFAR-10, as in section 6.1 of the paper.

Fine-tunes an ERM model (`init_checkpoint`, e.g. a run of configs/erm_cifar10.py)
for 65 epochs of SGD (batch 128, momentum 0.9, lr 0.0025 divided by 10 after
50 epochs) with 4 PGD steps of alpha = 0.5 eps per mini-batch on the
thresholded loss min(CE, -log 0.2). Arg "s,eps,sigma", the paper's grid being
s in {1, 8, 64}, eps in {2, 4, 6, 8, 10, 14, 18, 22, 26}, sigma in
{0.3, 0.5, 0.7, 0.9}. Evaluation: eps_uni(0.75) by S-PGD with m_k = 16,
K = 200, b = 10, gamma = 0.975, beta = 4, measured on 512 test images.
The paper fits the universal adversary on 5,000 validation images; here it
streams training images (CIFAR-10 has no validation split in tfds).
"""

import math

from advjax.attacks import pgd
from advjax.config import as_config_dict, base_config, eval_entry


def get_config(arg=None):
  sharedness, eps, sigma = (64, 10.0, 0.7) if not arg else arg.split(",")
  c = base_config()
  c.data.name = "cifar10"
  c.data.augment = True
  c.model.name = "resnet20"
  c.objective = "shared_at"
  c.adversarial.heap_size = int(sharedness)
  c.adversarial.weight = float(sigma)
  c.init_checkpoint = "runs/erm_cifar10"
  c.batch_size = 128
  c.num_epochs = 65
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.0025
  c.optimizer.momentum = 0.9
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (50.0,)
  c.schedule.decay_factor = 0.1
  eps = float(eps)
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(
      eps=eps, step_size=0.5 * eps, num_steps=4, init="uniform", loss="clipped_cross_entropy",
      kappa=-math.log(0.2)))
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.batch_size = 512
  c.eval.num_examples = 512
  c.evals.eps_uni = eval_entry("eps_uni", rate=0.75, search_steps=10, batch_size=16)
  c.evals.eps_adv = eval_entry("eps_adv", rate=0.75)
  return c
