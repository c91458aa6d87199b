"""advjax: adversarial and universal perturbations, and training against them.

Subpackages:
  attacks     per-example, heap and universal adversaries over a `logits_fn`.
  models      Flax classifiers with injected activation and normalisation.
  data        embedded real datasets and tfds/grain pipelines.
  training    train state, objectives, step factories and the training loop.
  evaluation  clean and robust accuracy, robustness searches.
"""

__version__ = "0.1.0"
