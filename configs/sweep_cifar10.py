"""The shared-AT paper's CIFAR-10 sweep (sec. 6.1, figure 3): s in {1, 8, 64} x eps x sigma on ResNet-20."""

from advjax import sweep
from configs import compare_digits, erm_cifar10, shared_at_cifar10


def get_config(arg=None):
  del arg
  runs = sweep.shared_at_grid(shared_at_cifar10.get_config(), erm_cifar10.get_config(), heap_sizes=(1, 8, 64),
                              eps=(2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 22.0, 26.0), weights=(0.3, 0.5, 0.7, 0.9),
                              step_ratio=0.5)
  return sweep.sweep_config(runs, columns=compare_digits.COLUMNS, results=compare_digits.RESULTS,
                            pareto=("eps_uni/eps", "clean/accuracy"), perturbation="eps_uni")
