"""Shared adversarial training of WRN-50-2 on a 200-class ImageNet subset (section 6.2 of the paper).

Fine-tunes an ERM model for 30 epochs of SGD (batch 128, momentum 0.9, weight
decay 5e-5, lr 0.01 divided by 10 after 20 epochs) with 5 PGD steps of
alpha = 0.4 eps. Arg "s,eps,sigma"; the paper's grid is s in {1, 32},
eps in {2, ..., 26}, sigma in {0.5, 1.0}. Evaluation: eps_uni(0.75) by S-PGD
with m_k = 10,000 training images per iteration, K = 20, b = 10, gamma =
0.975, beta = 4, on the whole validation split. The subset here is the first
200 classes in label order; the paper's own selection (its appendix A.5)
differs.
"""

from advjax.attacks import pgd
from advjax.config import as_config_dict
from configs import shared_at_cifar10


def get_config(arg=None):
  sharedness, eps, sigma = (32, 10.0, 1.0) if not arg else arg.split(",")
  c = shared_at_cifar10.get_config(f"{sharedness},{eps},{sigma}")
  c.data.name = "imagenet2012"
  c.data.class_subset = 200
  c.data.image_size = 224
  c.model.name = "wide_resnet50_2"
  c.init_checkpoint = "runs/erm_imagenet200"
  c.num_epochs = 30
  c.optimizer.learning_rate = 0.01
  c.optimizer.weight_decay = 5e-5
  c.schedule.boundaries = (20.0,)
  eps = float(eps)
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(
      eps=eps, step_size=0.4 * eps, num_steps=5, init="uniform", loss="clipped_cross_entropy"))
  c.eval.batch_size = 256
  c.eval.num_examples = 0
  c.evals.eps_uni.batch_size = 10_000
  c.evals.eps_uni.universal.num_steps = 20
  return c
