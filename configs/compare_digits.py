"""What `make train` runs: ERM vs adversarial training (s = 1) vs shared adversarial training (s = 32).

On the embedded MNIST digits: the ERM convnet of configs/default.py (10
epochs), then two one-epoch fine-tunings of it at eps = 76.5 (0.3 in [0, 1]
units) and sigma = 0.5, one with per-example PGD (s = 1) and one with heaps of
32 examples, each evaluated for clean accuracy, eps_adv(0.5) and eps_uni(0.75)
on 250 held-out digits. Results, the Pareto plot
and the universal perturbations land in the sweep's workdir.
"""

import ml_collections

from configs import default, shared_at_digits


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.experiment = shared_at_digits.get_config()  # Every grid point: this config with s, eps, sigma set.
  c.erm = default.get_config()  # The model every point fine-tunes.
  c.erm.num_epochs = 10  # Shorter than configs/default.py's 15 epochs, to fit the comparison in 15 minutes.
  c.experiment.num_epochs = 1
  # Evaluation sized to keep `make train` under 15 minutes on 2 CPU cores: 250
  # held-out digits, b = 6 bisection steps, PGD-10 probes for eps_adv, K = 60
  # S-PGD iterations for eps_uni. configs/sweep_digits.py keeps the larger settings.
  c.experiment.eval.num_examples = 250
  c.experiment.eval.batch_size = 250
  c.experiment.evals.eps_adv.search_steps = 6
  c.experiment.evals.eps_uni.search_steps = 6
  c.experiment.evals.eps_uni.universal.num_steps = 60
  # Same evaluation for all models.
  c.erm.eval = c.experiment.eval.copy_and_resolve_references()
  c.erm.evals = c.experiment.evals.copy_and_resolve_references()
  c.step_ratio = 0.5  # PGD step size alpha = step_ratio * eps.
  c.grid = ml_collections.ConfigDict()
  c.grid.sharedness = (1, 32)
  c.grid.eps = (76.5,)
  c.grid.adv_weight = (0.5,)
  return c
