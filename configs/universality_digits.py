"""The universality paper's protocol on the embedded MNIST digits (its appendix I convnet).

"Universality, robustness, and detectability of adversarial perturbations
under adversarial training" trains a classifier without adversaries, then
adversarially, keeps the model of every epoch and asks what happens to the
perturbations that still fool it. Two stages, one file (arg `clean` or
`adversarial`, the default):

  python train.py --config configs/universality_digits.py:clean --workdir runs/universality_digits_clean
  python train.py --config configs/universality_digits.py --workdir runs/universality_digits
  python eval.py  --config configs/universality_digits.py --workdir runs/universality_digits

`clean`: the small convnet of appendix I (configs/default.py's model), 10
epochs of Adam 1e-3 with a cosine schedule on the 4,000 training digits.

`adversarial`: fine-tunes that model (`init_checkpoint`, which must exist:
training stops with one error naming it otherwise) for 6 epochs of
adversarial training with sigma = 0 in the paper's notation, i.e. the
adversarial loss only (`adversarial.weight` = 1 here, since advjax's sigma weighs the
adversarial term), Adam 5e-4 constant. The adversary is the basic iterative
method from xi_0 = 0 on the model's own predicted labels (`attack.labels =
'predicted'`, the paper's guard against label leaking; the training loss
keeps the true labels). A checkpoint is written after every epoch and all
are kept; the evaluation's history reads them with the clean model as epoch 0.

Sizes. The paper's sizes are for CIFAR-10 (0-255 units): BI eps 4, alpha 1,
10 iterations; universal eps 10, alpha 2.5. On MNIST eps 4/255 is harmless,
so every size is multiplied by 8 (BI eps 32, alpha 8; universal eps 80,
alpha 20), keeping the paper's ratios alpha / eps and universal eps / BI eps.
The destruction grids are scaled likewise where additive (brightness up to
+-64, noise sigma up to 64; contrast and blur as for CIFAR-10).

Analysis sizes are modest so that eval.py finishes in about 10 minutes on 2
CPU cores: 256 held-out digits (stability, transfer, detection tests), 200
(destruction), 64 perturbations transferred to 500 other digits
(sharedness), universal perturbations from K = 4 batches of m = 64 per
update and 40 updates measured on all 1,000 held-out digits, and detectors
(32-64-64 wide instead of Metzen et al.'s 96-192-192) trained on 500
training digits and their BI examples for 4 passes.
The paper's own settings are those of configs/universality_cifar10.py.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict, base_config, eval_entry

SCALE = 8.0  # Digits sizes = the paper's CIFAR-10 sizes x SCALE (0-255 units).
BI_EPS, BI_STEP, BI_STEPS = 4.0 * SCALE, 1.0 * SCALE, 10
UNIVERSAL_EPS, UNIVERSAL_STEP = 10.0 * SCALE, 2.5 * SCALE
CLEAN_RUN = "runs/universality_digits_clean"


def clean_config():
  """ERM pre-training of the appendix-I convnet: the epoch-0 model."""
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "convnet"
  c.batch_size = 100  # 40 steps per epoch of the 4,000 training digits.
  c.num_epochs = 10
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.schedule.name = "cosine"
  c.log_every_steps = 40
  c.checkpoint_every_steps = 200
  c.eval.batch_size = 250
  return c


def adversarial_config():
  """Adversarial fine-tuning with BI on predicted labels, sigma = 0, every epoch kept."""
  c = clean_config()
  c.objective = "pgd_at"
  c.adversarial.weight = 1.0  # The paper's sigma = 0: no clean term.
  c.init_checkpoint = CLEAN_RUN
  c.num_epochs = 6  # 40 steps each; about 9 minutes on 2 CPU cores.
  c.optimizer.learning_rate = 5e-4
  c.schedule.name = "constant"
  c.adversarial.attack = as_config_dict(pgd.bim(eps=BI_EPS, step_size=BI_STEP, num_steps=BI_STEPS, labels="predicted"))
  c.checkpoint_every_steps = 4000 // c.batch_size  # One checkpoint per epoch...
  c.keep_checkpoints = 1000  # ... and all of them kept.
  c.eval.num_examples = 1000
  c.eval.batch_size = 250
  analyses(c)
  return c


def analyses(c) -> None:
  """Sets `c.evals` to the six analyses at digits-scaled, CPU-sized settings (module docstring)."""
  attack = dict(attack=dict(eps=BI_EPS, step_size=BI_STEP, num_steps=BI_STEPS), batch_size=256)
  c.evals.stability = eval_entry("stability", max_examples=256, **attack)
  c.evals.transfer = eval_entry("transfer", max_examples=256, **attack)
  c.evals.sharedness = eval_entry("sharedness", max_examples=64, num_other=500, num_train=500, **attack)
  universal = dict(eps=UNIVERSAL_EPS, step_size=UNIVERSAL_STEP, grad_batches=4, num_steps=40)
  c.evals.universal_epochs = eval_entry("universal_epochs", max_examples=1000, universal=universal,
                                        universal_batch=64, batch_size=250)
  c.evals.destruction = eval_entry("destruction", max_examples=200, grids=dict(
      brightness=(-64.0, -32.0, -16.0, 16.0, 32.0, 64.0), contrast=(0.6, 0.8, 1.2, 1.4),
      blur=(0.5, 1.0, 1.5), noise=(8.0, 16.0, 32.0, 64.0)), **attack)
  c.evals.detection = eval_entry("detection", max_examples=256, num_train=500, detector_features=(32, 64, 64),
                                 train_passes=4, universal=universal, universal_batch=64, **attack)


def get_config(arg=None):
  stage = arg or "adversarial"
  if stage == "clean":
    return clean_config()
  if stage == "adversarial":
    return adversarial_config()
  raise ValueError(f"configs/universality_digits.py: arg must be 'clean' or 'adversarial', got {arg!r}")
