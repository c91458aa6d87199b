"""The universality paper's CIFAR-10 protocol: pre-activation ResNet-18, clean then adversarial training.

Sec. 2 of "Universality, robustness, and detectability of adversarial
perturbations under adversarial training": a pre-activation ResNet-18
(64-128-256-512) trained for 200 epochs without adversaries (94.1% test
accuracy in the paper), then adversarially with the basic iterative
adversary (xi_0 = 0, eps = 4, alpha = 1, 10 iterations, 0-255 units) on the
adversarial loss only (the paper's sigma = 0; `adversarial.weight` = 1 in advjax's
convention) with the model's predicted labels (label leaking), one
checkpoint per epoch, all kept. Two stages (arg `clean` or `adversarial`):

  python train.py --config configs/universality_cifar10.py:clean --workdir runs/universality_cifar10_clean
  python train.py --config configs/universality_cifar10.py --workdir runs/universality_cifar10
  python eval.py  --config configs/universality_cifar10.py --workdir runs/universality_cifar10

The paper gives neither learning rate nor batch size. Chosen here: batch
128, SGD momentum 0.9, weight decay 5e-4, crop-and-flip augmentation; clean
lr 0.1 divided by 10 at epochs 100 and 150 (the usual recipe for this
network); adversarial lr 0.01 constant (a fine-tuning rate, the clean run's
middle rate). The adversarial stage runs 251 epochs so that every epoch the
paper's figures name (up to 251) exists; history position t is epoch t,
position 0 the clean model.

The analyses at the paper's settings: stability and transfer on 256 test
inputs (appendices A and B; all epochs for the scatter, the paper's epochs 0,
5, 15, 51 and 251 for transfer), sharedness of 1024 perturbations on 5000
other test inputs at epochs 0, 1, 15 and 251 (appendix C), appendix D's
universal perturbation (eps 10, alpha 2.5, m 128, K 10, 200 iterations) at
every epoch, destruction rates (BI, FGSM at eps 4, DeepFool) and detection
at epochs 0, 1, 5, 15, 51 and 251.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict, base_config, eval_entry

BI_EPS, BI_STEP, BI_STEPS = 4.0, 1.0, 10
NUM_TRAIN = 50_000
CLEAN_RUN = "runs/universality_cifar10_clean"
FIGURE_EPOCHS = (0, 1, 5, 15, 51, 251)


def clean_config():
  """200 epochs of ERM: the epoch-0 model."""
  c = base_config()
  c.data.name = "cifar10"
  c.data.augment = True
  c.model.name = "preact_resnet18"
  c.batch_size = 128
  c.num_epochs = 200
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (100.0, 150.0)
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.batch_size = 512
  return c


def analyses(c, bi=(BI_EPS, BI_STEP, BI_STEPS)) -> None:
  """Sets `c.evals` to the six analyses at the paper's settings."""
  eps, step, steps = bi
  attack = dict(attack=dict(eps=eps, step_size=step, num_steps=steps), batch_size=256)
  c.evals.stability = eval_entry("stability", max_examples=256, **attack)
  c.evals.transfer = eval_entry("transfer", max_examples=256, epochs=(0, 5, 15, 51, 251), **attack)
  c.evals.sharedness = eval_entry("sharedness", max_examples=1024, num_other=5000, num_train=1024,
                                  epochs=(0, 1, 15, 251), **attack)
  c.evals.universal_epochs = eval_entry("universal_epochs", max_examples=10_000, universal_batch=128,
                                        amplify=10.0, batch_size=512)
  c.evals.destruction = eval_entry("destruction", max_examples=1000, epochs=FIGURE_EPOCHS, **attack)
  c.evals.detection = eval_entry("detection", max_examples=1000, num_train=10_000, epochs=FIGURE_EPOCHS,
                                 universal_batch=128, **attack)


def adversarial_config():
  """Adversarial training from the clean model with BI on predicted labels, sigma = 0, every epoch kept."""
  c = clean_config()
  c.objective = "pgd_at"
  c.adversarial.weight = 1.0  # The paper's sigma = 0: the adversarial loss only.
  c.init_checkpoint = CLEAN_RUN
  c.num_epochs = 251
  c.optimizer.learning_rate = 0.01
  c.schedule.name = "constant"
  c.schedule.boundaries = ()
  c.adversarial.attack = as_config_dict(pgd.bim(eps=BI_EPS, step_size=BI_STEP, num_steps=BI_STEPS, labels="predicted"))
  c.checkpoint_every_steps = NUM_TRAIN // c.batch_size  # One checkpoint per epoch (390 steps)...
  c.keep_checkpoints = 10_000  # ... and all of them kept.
  c.eval.num_examples = 10_000
  analyses(c)
  return c


def get_config(arg=None):
  stage = arg or "adversarial"
  if stage == "clean":
    return clean_config()
  if stage == "adversarial":
    return adversarial_config()
  raise ValueError(f"configs/universality_cifar10.py: arg must be 'clean' or 'adversarial', got {arg!r}")
