"""Adversaries over a `logits_fn`: losses, threat models, the iterative core, DeepFool.

An attack is a pure function `(logits_fn, x, y, rng, cfg) -> x_adv`, where
`logits_fn(x) -> logits` closes over the model and its variables. It never sees
the model class; `make_logits_fn` builds the closure and makes the BatchNorm
mode during the attack an explicit choice.

  losses     per-example losses, larger = stronger attack; registry by name
  threat     eps balls (0-255 units in configs), optional region masks, the box [0, 1]
  rules      ascent rules (sign, L2, momentum, SGD, Adam) as optax transformations
  core       the one iterative update, step-size schedules, restart selection
  pgd        per-example attacks: FGSM, BIM, PGD, MI-FGSM, DI2-FGSM, M-DI2-FGSM
  diversity  DI2-FGSM's random resize and padding
  ensemble   fused logits of several models (Xie thesis, eq. 3.8)
  deepfool   minimal L2 / L-inf perturbations
  dag        dense adversary generation against segmentation (Xie thesis, ch. 2)
  heap       heap adversaries: one perturbation shared by s examples (shared AT)
  universal  universal perturbations by stochastic PGD / SGD over a data stream
  universal_deepfool  iterative DeepFool universal perturbations (UAT's algorithm 1)
  synthesis  inpainting and generation with a segmentation model (robust-segmentation paper, eqs. 6-7)

Labels are class indices or dense label maps; attacks score them through a
task (`advjax.tasks`), by default the one the labels' rank implies.

The presets `fgsm`, `bim`, `pgd`, `mi_fgsm`, `di2_fgsm`, `m_di2_fgsm` live in
`advjax.attacks.pgd` (e.g. `attacks.pgd.pgd(eps=8.0)`) and DeepFool is
`attacks.deepfool.deepfool`; they are not lifted here, because the package
attributes `pgd` and `deepfool` must stay the modules.
"""

from advjax.attacks import (core, dag, deepfool, diversity, ensemble, heap, losses, pgd, rules, synthesis, threat,
                            universal, universal_deepfool)
from advjax.attacks.deepfool import DeepFoolConfig
from advjax.attacks.ensemble import ensemble_logits_fn
from advjax.attacks.pgd import AttackConfig, attack
from advjax.attacks.synthesis import SynthesisConfig
from advjax.errors import unknown_name

# BatchNorm during an attack: the running statistics, or the attacked batch's.
BN_MODES = ("eval", "batch")


def make_logits_fn(model, variables, bn_mode: str = "eval"):
  """Binds a linen classifier and its variables into `x -> logits` for attacks.

  Args:
    model: linen Module with `__call__(x, train=False, use_batch_stats=None)`.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    bn_mode: 'eval' normalises with the running statistics; 'batch' with the
      statistics of the attacked batch, whose update is discarded so the
      attack never changes the model.

  Returns:
    `x -> [batch, classes]` logits for x [batch, height, width, channels] in [0, 1].

  Raises:
    ConfigError: unknown `bn_mode`.
  """
  if bn_mode == "eval":
    return lambda x: model.apply(variables, x, train=False)
  if bn_mode == "batch":
    def logits_fn(x):
      logits, _ = model.apply(variables, x, train=False, use_batch_stats=True,
                              mutable=["batch_stats"])
      return logits
    return logits_fn
  raise unknown_name("bn_mode", bn_mode, BN_MODES)


__all__ = [
    "AttackConfig", "BN_MODES", "DeepFoolConfig", "SynthesisConfig", "attack", "core", "dag", "deepfool",
    "diversity", "ensemble", "ensemble_logits_fn", "heap", "losses", "make_logits_fn", "pgd", "rules", "synthesis",
    "threat", "universal", "universal_deepfool",
]
