"""What `make train` runs: ERM vs adversarial training (s = 1) vs shared adversarial training (s = 32).

On the embedded MNIST digits: the ERM convnet of configs/default.py (10
epochs), then two one-epoch fine-tunings of it at eps = 76.5 (0.3 in [0, 1]
units) and sigma = 0.5, one with per-example PGD (s = 1) and one with heaps of
32 examples, each evaluated for clean accuracy, eps_adv(0.5) and eps_uni(0.75)
on 250 held-out digits. A sweep (`advjax.sweep`): the runs are `erm`,
`s1_eps76.5_sigma0.5` and `s32_eps76.5_sigma0.5` in `<workdir>/<run>/seed0`;
results, the Pareto plot and the universal perturbations land in the workdir.
`--config.seeds="(0,1,2)"` repeats every run over three seeds.
"""

from advjax import sweep
from configs import default, shared_at_digits

# The table's columns: the grid's fields, then clean accuracy, eps_adv(0.5) and eps_uni(0.75).
COLUMNS = ("adversarial.heap_size", "adversarial.attack.eps", "adversarial.weight")
RESULTS = ("clean/accuracy", "eps_adv/eps", "eps_uni/eps")


def experiment_and_erm():
  """The configs every point and the ERM model use, with make train's evaluation."""
  experiment = shared_at_digits.get_config()  # Every grid point: this config with s, eps, sigma set.
  erm = default.get_config()  # The model every point fine-tunes.
  erm.num_epochs = 10  # Shorter than configs/default.py's 15 epochs, to fit the comparison in 15 minutes.
  experiment.num_epochs = 1
  # Evaluation sized to keep `make train` under 15 minutes on 2 CPU cores: 250
  # held-out digits, b = 6 bisection steps, PGD-10 probes for eps_adv, K = 60
  # S-PGD iterations for eps_uni. configs/sweep_digits.py keeps the larger settings.
  experiment.eval.num_examples = 250
  experiment.eval.batch_size = 250
  experiment.evals.eps_adv.search_steps = 6
  experiment.evals.eps_uni.search_steps = 6
  experiment.evals.eps_uni.universal.num_steps = 60
  # Same evaluation for all models.
  erm.eval = experiment.eval.copy_and_resolve_references()
  erm.evals = experiment.evals.copy_and_resolve_references()
  return experiment, erm


def get_config(arg=None):
  del arg
  experiment, erm = experiment_and_erm()
  runs = sweep.shared_at_grid(experiment, erm, heap_sizes=(1, 32), eps=(76.5,), weights=(0.5,),
                              step_ratio=0.5)  # PGD step size alpha = 0.5 eps.
  return sweep.sweep_config(runs, seeds=(0,), columns=COLUMNS, results=RESULTS,
                            pareto=("eps_uni/eps", "clean/accuracy"), perturbation="eps_uni")
