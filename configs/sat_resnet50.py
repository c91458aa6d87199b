"""Smooth adversarial training of ResNet-50 on ImageNet (Xie thesis, ch. 5, sec. 5.3-5.4).

Trained with PGD-1 at eps 4 (FGSM with a random start, step 4) and evaluated
with PGD-200 at eps 4. `get_config('<activation>')` picks the activation:
'silu' (default, the strongest in fig. 5.3), 'parametric_softplus',
'smooth_relu', 'gelu', 'elu', 'celu:<alpha>', or 'relu' for the baseline;
`--config.adversarial.sat.softplus_grad=attacker|weights|both` runs table 5.1's
diagnostic on the ReLU baseline.
"""

from advjax.config import as_config_dict, base_config, eval_entry
from advjax.attacks import pgd


def get_config(arg=None):
  c = base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = True
  c.model.name = "resnet50"
  c.model.activation = arg or "silu"
  c.objective = "pgd_at"
  c.adversarial.weight = 1.0
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(eps=4.0, step_size=4.0, num_steps=1, init="uniform"))
  c.batch_size = 4096
  c.num_epochs = 100
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 1.6  # 0.1 per 256 images.
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 5.0
  c.eval.batch_size = 1000
  c.eval.split = "validation"
  c.evals.pgd = eval_entry("pgd", eps=(4.0,), attack=dict(num_steps=200, step_size=1.0))
  return c
