"""Shared adversarial training on the embedded MNIST digits, CPU-sized.

Fine-tunes the ERM convnet of configs/default.py (its workdir is
`init_checkpoint`) with a heap adversary of sharedness s, following the
paper's CIFAR-10 recipe scaled down: 4 PGD steps with alpha = 0.5 eps on the
thresholded loss min(CE, -log 0.2), sigma * L(heap) + (1 - sigma) * L(clean).

Arg: "s,eps,sigma", e.g. `--config configs/shared_at_digits.py:32,76.5,0.5`
(eps in 0-255 units). Evaluation: eps_adv(0.5) and eps_uni(0.75) on 500
held-out digits, with fewer search and attack iterations than the paper's
b = 10 / K = 200 so that a model is evaluated in about a minute on a CPU.
"""

import math

from advjax.attacks import pgd
from advjax.config import as_config_dict, eval_entry
from configs import default


def get_config(arg=None):
  sharedness, eps, sigma = (32, 76.5, 0.5) if not arg else arg.split(",")
  c = default.get_config()
  c.objective = "shared_at"
  c.init_checkpoint = "runs/default"
  c.adversarial.heap_size = int(sharedness)
  c.adversarial.weight = float(sigma)
  c.num_epochs = 2
  c.optimizer.learning_rate = 5e-4
  eps = float(eps)
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(
      eps=eps, step_size=0.5 * eps, num_steps=4, init="uniform", loss="clipped_cross_entropy",
      kappa=-math.log(0.2)))
  c.eval.num_examples = 500
  del c.evals["pgd"]
  c.evals.eps_adv = eval_entry("eps_adv", rate=0.5, search_steps=8, attack=dict(num_steps=10))
  c.evals.eps_uni = eval_entry("eps_uni", rate=0.75, search_steps=8, batch_size=16,
                               universal=dict(num_steps=100))
  return c
