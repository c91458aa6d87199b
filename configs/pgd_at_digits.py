"""PGD adversarial training (Madry et al.) on the embedded MNIST digits, CPU-sized.

Fine-tunes the ERM model of configs/default.py (run it first; its workdir is
`init_checkpoint`) for 2 epochs against the MNIST threat model
eps = 0.3 (76.5 in 0-255 units): a 7-step PGD adversary with random start and
step 2.5 * eps / 7. Evaluation: PGD-40 at eps in {0.1, 0.2, 0.3} x 255 and
eps_adv(0.5), the same as eval.py reports for configs/default.py.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict
from configs import default


def get_config(arg=None):
  del arg
  c = default.get_config()
  c.objective = "pgd_at"
  c.init_checkpoint = "runs/default"
  c.num_epochs = 2
  c.optimizer.learning_rate = 5e-4
  eps = 0.3 * 255
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(eps=eps, step_size=2.5 * eps / 7, num_steps=7, init="uniform"))
  return c
