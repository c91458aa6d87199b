"""ERM pre-training of ResNet-20 (64-128-256) on CIFAR-10: the model shared AT fine-tunes.

SGD with momentum 0.9, batch 128, lr 0.1 divided by 10 at epochs 100 and 150
of 200, weight decay 5e-4, crop-and-flip augmentation (the paper reports
93.25% clean accuracy for its pre-trained model).
"""

from configs import shared_at_cifar10


def get_config(arg=None):
  del arg
  c = shared_at_cifar10.get_config()
  c.objective = "erm"
  c.adversarial.heap_size = 1
  c.adversarial.weight = 1.0
  c.init_checkpoint = ""
  c.num_epochs = 200
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.schedule.boundaries = (100.0, 150.0)
  return c
