"""advjax: adversarial and universal perturbations, and training against them.

Subpackages:
  attacks     per-example, heap and universal adversaries over a `logits_fn`.
  models      Flax classifiers and segmenters with injected activation and normalisation.
  data        embedded real datasets and tfds/grain pipelines.
  training    train state, objectives, step factories and the training loop.
  evaluation  clean and robust accuracy, robustness searches.
  analysis    the universality paper's analyses of perturbations over training.
  run_dir     the only code that reads and writes a run's files.
  cpu         what makes XLA:CPU fast, behind one switch.
"""

__version__ = "0.1.0"
