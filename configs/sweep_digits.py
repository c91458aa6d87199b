"""The Pareto sweep on the embedded digits: s in {1, 8, 32} x eps x sigma (hours on a CPU).

Same models and evaluation as configs/compare_digits.py over a grid like the
paper's figure 3, scaled to MNIST radii.
"""

from advjax import sweep
from configs import compare_digits


def get_config(arg=None):
  del arg
  experiment, erm = compare_digits.experiment_and_erm()
  runs = sweep.shared_at_grid(experiment, erm, heap_sizes=(1, 8, 32), eps=(25.5, 51.0, 76.5, 102.0),
                              weights=(0.3, 0.5, 0.7, 0.9), step_ratio=0.5)
  return sweep.sweep_config(runs, columns=compare_digits.COLUMNS, results=compare_digits.RESULTS,
                            pareto=("eps_uni/eps", "clean/accuracy"), perturbation="eps_uni")
