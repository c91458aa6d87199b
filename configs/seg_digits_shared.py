"""Shared adversarial training of the digit-canvas FCN: sec. 6.3 of the shared-AT paper, CPU-sized.

Fine-tunes the standard model of configs/seg_digits.py (runs/seg_digits, its
`init_checkpoint`: train it first) with a heap adversary of sharedness s on
dense labels, with the paper's recipe of sec. 4.3 applied per pixel: the
adversary ascends the thresholded loss min(CE, -log 0.2) of every pixel,
averaged over the label map (a pixel already pushed below probability 0.2 for
its class stops pulling the perturbation), and both losses of
sigma * L(heap) + (1 - sigma) * L(clean) use label smoothing 0.1 per pixel.
s = 1 is adversarial training with the same recipe. Heaps are s consecutive
canvases of a device's batch; s = 32, the whole batch on one device, is the
paper's s = batch.

Arg: "s,eps,sigma" (eps in 0-255 units). The models of the sec. 6.3
analogue (README): AT `1,76.5,0.5` (the threat model of the digit classifiers
and of configs/seg_digits_at.py) and SAT `32,102,0.7` (the default), whose
clean mIoU matches AT's (68.6 vs 70.8), chosen as the paper chooses its
settings; `32,153,0.7`, the paper's AT-to-SAT eps ratio, cost 7.5 points
more (63.3).
The adversary: 3 PGD steps of 2.5 eps / 3 from a random start (the paper:
5 steps of 0.4 eps; 3 keep an epoch near 10 minutes on 2 CPU cores);
2 epochs, Adam 5e-4, cosine (the paper: 20 epochs of Adam 1e-4 on Cityscapes).

Evaluation (sec. 6.3), on the digits' pixels: the background covers about
90% of a canvas and 91% of a target scene, so every rate leaves it out
(`ignore_class=0`; counted over all pixels, not even eps = 255 reached
delta = 0.95 against the standard model in any of the three searches).
Clean pixel accuracy and mIoU on the 1,000 test canvases; eps_adv(0.95),
the radius at which per-image PGD (20 annealed steps, on and against the
digit pixels) makes 95% of the digit pixels wrong, on 32 canvases (the
standard model: 52.8); eps_uni(delta) targeted toward a static target scene
(the label map of one training canvas; success: a fraction delta of the
target's digit pixels predicted as the target's digit) and untargeted (a
fraction delta of the ground truth's digit pixels wrong), each fitted on every
pixel by stochastic PGD on mini-batches of m_k = 5 training canvases with
gamma = 0.99, beta = 2, no loss thresholding, K = 100 (the paper: 200), by
b = 8 bisection steps (the paper: 10), measured on 128 test canvases (the
paper: 16), with a figure of the perturbation and the predictions under it.
The universal searches use delta = 0.25 (targeted) and 0.75 (untargeted),
not the paper's 0.95: at eps = 255 the standard model's rates were 0.45 and
0.94, so at 0.95 every model would read "> 255". (A perturbation of 255 can
replace any canvas by the target's, so the targeted 0.45 is the fitting's
limit within K = 100 steps, not the threat model's.) These cuts keep one
model's evaluation near 4 minutes on 2 CPU cores. configs/seg_digits.py's
entries (PGD, DAG, synthesis) stay available.
"""

import dataclasses
import math

from advjax.attacks import pgd, universal
from advjax.config import as_config_dict, eval_entry
from configs import seg_digits

# delta of eps_adv (the paper's); of the universal searches, lowered until the standard model's
# eps_uni lies inside (0, 255) (docstring).
DELTA = 0.95
DELTA_TARGETED = 0.25
DELTA_UNTARGETED = 0.75
BACKGROUND = 0
# The universal adversary of sec. 6.3: m_k = 5, gamma = 0.99, beta = 2, plain CE; K = 100 here.
UNIVERSAL = universal.shared_at_eval_config(num_steps=100, beta=2.0, gamma=0.99, loss="cross_entropy")


def get_config(arg=None):
  sharedness, eps, sigma = ("32", "102", "0.7") if not arg else arg.split(",")
  c = seg_digits.get_config()
  c.objective = "shared_at"
  c.init_checkpoint = "runs/seg_digits"
  c.adversarial.heap_size = int(sharedness)
  c.adversarial.weight = float(sigma)
  c.loss.label_smoothing = 0.1
  c.num_epochs = 2
  c.optimizer.learning_rate = 5e-4
  eps = float(eps)
  c.adversarial.attack = as_config_dict(pgd.AttackConfig(
      eps=eps, step_size=2.5 * eps / 3, num_steps=3, init="uniform", loss="clipped_cross_entropy",
      kappa=-math.log(0.2)))
  c.eval.batch_size = 16
  c.evals.eps_adv = eval_entry("eps_adv", rate=DELTA, search_steps=8, attack=dict(num_steps=20), max_examples=32,
                               ignore_class=BACKGROUND)
  targeted = dataclasses.replace(UNIVERSAL, targeted=True, target_class=-1)
  for name, cfg, scene, rate in (("eps_uni_targeted", targeted, True, DELTA_TARGETED),
                                 ("eps_uni_untargeted", UNIVERSAL, False, DELTA_UNTARGETED)):
    c.evals[name] = eval_entry("eps_uni", rate=rate, search_steps=8, batch_size=5, max_examples=128,
                               universal=cfg, target_scene=scene, figure_images=4,
                               ignore_class=BACKGROUND)
  c.train_evals = ("clean",)
  return c
