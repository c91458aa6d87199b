"""Analyses of adversarial perturbations along adversarial training.

These follow "Universality, robustness, and detectability of adversarial
perturbations under adversarial training" (the universality paper). One
classifier is trained adversarially for T epochs and its parameters theta_t
are kept after every epoch; each module asks a question about the
perturbations that still fool the model of some epoch. Every function takes a
model as a closure `logits_fn(x) -> [batch, classes]` over images x [batch, H,
W, C] in [0, 1] (`advjax.attacks.make_logits_fn`), or a list `logits_fns` of
them, one per epoch, and arrays; perturbations come from the existing attacks
(`pgd.attack` with `pgd.bim` / `pgd.fgsm` configs, `deepfool.deepfool`).
Work over the data is jitted; loops over epochs and batches run on the host
and return NumPy arrays.

  epochs        the paper's adversaries (BI eps 4 alpha 1 x10, FGSM, DeepFool),
                adversarial sets per epoch [T, N, H, W, C], every model on
                every set (`cross_evaluate`), batching helpers
  stability     temporal stability profile P_{t1,t2}(x) = p(y | x + xi_t1;
                theta_t2) [N, T, T], MaxMin, MinMax and the scatter of
                appendix B (sec. 3.1, figure 1)
  sharedness    effective matrix of perturbations x other inputs, sharedness
                ratio per epoch (appendix C), cost change J^Delta now on other
                inputs vs later on the own input and its log-log Pearson r
                (sec. 3.1, figure 2)
  universal_epochs  accuracy under per-epoch universal perturbations, the
                perturbation x model-epoch matrix (sec. 3.2)
  destruction   destruction rate of Kurakin et al. under brightness, contrast,
                Gaussian blur and noise, per strength, epoch and adversary
                (sec. 3.3, appendix F)
  detection     Metzen et al.'s detector on raw images, its train step,
                detection accuracy and the epoch x epoch matrix, detector
                objectives for the universal adversary (sec. 3.4)
  transfer      black-box transfer matrix: model j on the examples of epoch i
                (appendix A)

A typical run: `sets = epochs.per_epoch_adversarial(fns, x, y, rng, 'bi')`,
then `stability.stability_profiles(fns, sets, y)`,
`transfer.transfer_matrix(fns, sets, y)`, and
`sharedness.sharedness_per_epoch(fns, sets[:, :P] - x[:P], x[P:], y[P:])`.
"""

from advjax.analysis import (destruction, detection, epochs, sharedness, stability, transfer,
                             universal_epochs)

__all__ = ["destruction", "detection", "epochs", "sharedness", "stability", "transfer",
           "universal_epochs"]
