"""Smooth adversarial training on the embedded MNIST digits, CPU-sized (Xie thesis, ch. 5).

The universality-paper convnet with a smooth activation (`get_config('<activation>')`,
default 'parametric_softplus'; 'relu' is the baseline), PGD-1 training at
eps 32 (random start, one step of 32) and PGD-20 evaluation at eps 32.
`--config.adversarial.sat.softplus_grad=both` with activation 'relu' is table 5.1's diagnostic.
"""

from advjax.config import as_config_dict, base_config, eval_entry
from advjax.attacks import pgd


def get_config(arg=None):
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "convnet"
  c.model.activation = arg or "parametric_softplus"
  c.objective = "pgd_at"
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(eps=32.0, step_size=32.0, num_steps=1, init="uniform"))
  c.batch_size = 64
  c.num_epochs = 6
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.schedule.name = "cosine"
  c.log_every_steps = 25
  c.checkpoint_every_steps = 125
  c.eval.batch_size = 200
  c.evals.pgd = eval_entry("pgd", eps=(32.0,), attack=dict(num_steps=20, step_size=4.0))
  return c
