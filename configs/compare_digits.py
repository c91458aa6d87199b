"""What `make train` runs: ERM vs adversarial training (s = 1) vs shared adversarial training (s = 32).

On the embedded MNIST digits: the ERM convnet of configs/default.py, then two
fine-tunings of it at eps = 76.5 (0.3 in [0, 1] units) and sigma = 0.5, one
with per-example PGD (s = 1) and one with heaps of 32 examples, each evaluated
for clean accuracy, eps_adv(0.5) and eps_uni(0.75). Results, the Pareto plot
and the universal perturbations land in the sweep's workdir.
"""

import ml_collections

from configs import default, shared_at_digits


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.experiment = shared_at_digits.get_config()  # Every grid point: this config with s, eps, sigma set.
  c.erm = default.get_config()  # The model every point fine-tunes.
  c.erm.eval = c.experiment.eval.copy_and_resolve_references()  # Same evaluation for all models.
  c.step_ratio = 0.5  # PGD step size alpha = step_ratio * eps.
  c.grid = ml_collections.ConfigDict()
  c.grid.sharedness = (1, 32)
  c.grid.eps = (76.5,)
  c.grid.adv_weight = (0.5,)
  return c
