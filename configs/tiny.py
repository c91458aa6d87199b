"""A seconds-long run of a tiny convnet on the embedded digits, for tests and smoke checks."""

from advjax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "convnet_tiny"
  c.batch_size = 32
  c.num_steps = 12
  # SGD rather than Adam: Adam's first steps are close to sign(gradient), which
  # turns reduction-order rounding into visible differences between device counts.
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.log_every_steps = 1
  c.checkpoint_every_steps = 4
  c.eval.batch_size = 200
  return c
