"""ERM on the embedded MNIST digits (4,000 train / 1,000 test): what `make train` runs.

The small convnet of the universality paper (appendix I) with Adam; a few
minutes on 2 CPU cores.
"""

from advjax.config import base_config, eval_entry


def get_config(arg=None):
  del arg
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "convnet"
  c.batch_size = 64
  c.num_epochs = 15
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.schedule.name = "cosine"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.eval.batch_size = 200
  # eval.py: robustness of the ERM model under the same attacks as configs/pgd_at_digits.py,
  # PGD-40 at eps 0.1/0.2/0.3 and eps_adv(0.5), on the first 500 held-out digits.
  c.eval.num_examples = 500
  c.evals.pgd = eval_entry("pgd", eps=(25.5, 51.0, 76.5), attack=dict(num_steps=40))
  c.evals.eps_adv = eval_entry("eps_adv", rate=0.5, search_steps=8, attack=dict(num_steps=20))
  return c
