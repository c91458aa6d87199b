"""Evaluators returning dicts of floats: clean and robust accuracy, robustness searches.

  robustness   clean_accuracy, accuracy_under_attack, eps_adv_search (eps_adv of
               shared adversarial training, sec. 5.2)
"""

from advjax.evaluation.robustness import (accuracy_under_attack, clean_accuracy, eps_adv_config,
                                          eps_adv_search)

__all__ = ["accuracy_under_attack", "clean_accuracy", "eps_adv_config", "eps_adv_search"]
