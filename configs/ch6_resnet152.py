"""Adversarial training of ResNet-152 at scale (Xie thesis, ch. 6, sec. 6.3).

Targeted PGD at eps 16, step 1, 30 iterations, starting from the clean image
with probability 0.2 and uniformly in the eps cube otherwise (init 'mixed');
110 epochs, learning rate divided by 10 at epochs 35, 70 and 95; evaluation
against targeted PGD (2000 iterations in the thesis; 200 here, override
`--config.evals.pgd.attack.num_steps=2000`). The strategy is `get_config(arg)`:

  'adv'        100% adv + 0% clean (Madry et al.), the default
  'mixture'    100% adv + 100% clean through one BN (eq. 6.1, alpha = 0.5)
  'mixture_alp'  the same with adversarial logit pairing
  'mbn'        MBN: clean through the main BNs, adversarial through 'adv'
  'mbn_alp'    MBN with logit pairing
  'gn'         100% adv + 100% clean with GroupNorm instead of BatchNorm

Add `--config.advprop.running_stats_last_epochs=10` for table 6.2's
heuristic, and `--config.advprop.eval_bn=adv` to evaluate with MBN_adv.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict, base_config, eval_entry

STRATEGIES = ("adv", "mixture", "mixture_alp", "mbn", "mbn_alp", "gn")


def get_config(arg=None):
  strategy = arg or "adv"
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
  c = base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = True
  c.model.name = "resnet152"
  c.objective = "advprop"
  # The attack normalises with the batch statistics of the BN set it attacks through, as AdvProp's does.
  c.advprop.attack = as_config_dict(pgd.AttackConfig(
      eps=16.0, step_size=1.0, num_steps=30, init="mixed", clean_init_fraction=0.2, targeted=True))
  c.advprop.bn_mode = "batch"
  c.advprop.adv_bn = "adv" if strategy.startswith("mbn") else "main"
  c.advprop.clean_ratio = 0.0 if strategy == "adv" else 1.0
  c.advprop.logit_pairing = 0.5 if strategy.endswith("alp") else 0.0
  if strategy == "gn":
    c.model.norm = "groupnorm"
  c.batch_size = 4096
  c.num_epochs = 110
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 1.6
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (35.0, 70.0, 95.0)
  c.schedule.decay_factor = 0.1
  c.eval.batch_size = 1000
  c.eval.split = "validation"
  c.evals.pgd = eval_entry("pgd", eps=(16.0,), attack=dict(num_steps=200, step_size=1.0, targeted=True))
  return c
