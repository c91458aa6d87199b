"""Per-pixel PGD adversarial training of the digit-canvas FCN (the robust-segmentation paper's AT model).

Fine-tunes the standard model of configs/seg_digits.py (its workdir,
runs/seg_digits, is `init_checkpoint`: train it first) for 2 epochs against a
per-pixel L-inf PGD adversary: eps 76.5 (0.3 in [0, 1], the digits' usual
threat model and the robust backbone's), 3 steps of 2.5 eps / 3 from a
random start, the per-pixel cross-entropy summed over the label map as the
attack loss. The training loss weighs the adversarial and the clean batch
equally (sigma = 0.5, as the classifiers of `make train`), Adam 5e-4, cosine.
`model.backbone_checkpoint` stays the standard model's: it fixes the input
normalisation (the digits' statistics), and init_checkpoint then replaces
every variable.
Three steps keep an epoch near 10 minutes on 2 CPU cores; the evaluation
(configs/seg_digits.py) uses the same adversary and PGD-10 besides it.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict
from configs import seg_digits


def get_config(arg=None):
  c = seg_digits.get_config(arg)
  c.objective = "pgd_at"
  c.init_checkpoint = "" if arg == "tiny" else "runs/seg_digits"
  c.adversarial.weight = 0.5
  c.num_epochs = 2
  c.optimizer.learning_rate = 5e-4
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(
      eps=seg_digits.AT_EPS, step_size=seg_digits.AT_STEP_SIZE, num_steps=seg_digits.AT_STEPS, init="uniform"))
  return c
