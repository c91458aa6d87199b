"""The paper's ImageNet-subset Pareto sweep (figure 4): s in {1, 32} x eps x sigma, fine-tuning WRN-50-2."""

from advjax import sweep
from configs import compare_digits, shared_at_imagenet


def get_config(arg=None):
  del arg
  erm = shared_at_imagenet.get_config()
  # ERM pre-training: 100 epochs of SGD, lr 0.1 divided by 10 every 30 epochs.
  erm.objective = "erm"
  erm.adversarial.heap_size = 1
  erm.init_checkpoint = ""
  erm.num_epochs = 100
  erm.optimizer.learning_rate = 0.1
  erm.schedule.boundaries = (30.0, 60.0, 90.0)
  runs = sweep.shared_at_grid(shared_at_imagenet.get_config(), erm, heap_sizes=(1, 32),
                              eps=(2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 22.0, 26.0), weights=(0.5, 1.0),
                              step_ratio=0.4)
  return sweep.sweep_config(runs, columns=compare_digits.COLUMNS, results=compare_digits.RESULTS,
                            pareto=("eps_uni/eps", "clean/accuracy"), perturbation="eps_uni")
