"""An FCN on the embedded digit canvases (mnist_seg_embedded): the segmentation default.

64x64 canvases of 1-3 MNIST digits, 11 classes (background and the ten
digits). The model is FCN-8s on the universality paper's convnet, read before
each max pool ('convnet_dense': skips at 1/1, 1/2 and 1/4 of the input) with
fc6 (7x7) and fc7 (1x1) 128 wide on the coarsest stage ('fcn8s_fc:128,128').
As Long et al. do, the backbone starts from a classifier: the ERM convnet
that `make train` trains on the digits (runs/compare/erm/seed0), fine-tuned with
the head (12 epochs, Adam 2e-3, cosine). The arg picks the model:

  ''        standard: backbone from the ERM classifier, everything trained
  'rb'      robust backbone (the robust-segmentation paper's RB): the backbone
            of the adversarially trained classifier of `make train`
            (runs/compare/s1_eps76.5_sigma0.5/seed0: PGD s = 1, eps 76.5), frozen;
            only the head is trained, for 6 epochs
  'tiny'    convnet_dense_tiny from scratch, for tests

configs/seg_digits_at.py fine-tunes the standard model adversarially. Run
`make train` first: it writes the classifier runs the backbones come from.

What was measured while choosing this (1,000 test canvases, one seed):
FCN-8s read after the pools (skips at 1/2, 1/4, 1/8; fc 256 at 1/8) from
scratch reached mIoU 0.715 in 16 epochs (20 min); about half its digit-pixel
errors were boundaries blurred by the 1/2-resolution skip and half whole
digits labelled as another digit. Reading the stages before the pools
removed most boundary errors (6 epochs: 0.688, of the remaining errors 86%
were digit identity); starting from the classifier's backbone gave 0.720 in
6 epochs. Heads without fc layers (linear scores on the stages, also on a
ResNet-14) learnt digit identity far more slowly (pixel accuracy 95.8% after
4 epochs, barely above all-background).

Evaluation (`eval.py`): pixel accuracy and mIoU clean (all 1,000 test
canvases) and, on the first 500, under the adversarial-training adversary of
configs/seg_digits_at.py (per-pixel PGD-3 at eps 76.5; the robust-segmentation
paper's "robust" columns) and PGD-10 at the same eps; DAG (thesis table 2.1:
ORIG / ADVR / PERM mIoU, iterations, perceptibility p) on 100 canvases; a
figure; inpainting and generation on 100 canvases ('synthesis').
"""

from advjax.config import base_config, eval_entry

# The adversary of configs/seg_digits_at.py; the robust columns use the same one.
AT_EPS = 76.5
AT_STEPS = 3
AT_STEP_SIZE = 2.5 * AT_EPS / AT_STEPS
BACKBONES = {"": "runs/compare/erm/seed0", "rb": "runs/compare/s1_eps76.5_sigma0.5/seed0", "tiny": ""}


def get_config(arg=None):
  arg = arg or ""
  if arg not in BACKBONES:
    raise ValueError(f"seg_digits: arg must be one of {sorted(BACKBONES)}, not {arg!r}")
  c = base_config()
  c.data.name = "mnist_seg_embedded"
  c.model.name = "convnet_dense_tiny" if arg == "tiny" else "convnet_dense"
  c.model.head = "fcn8s_fc:128,128"
  c.model.backbone_checkpoint = BACKBONES[arg]
  c.model.freeze_backbone = arg == "rb"
  c.batch_size = 32
  c.num_epochs = 6 if arg == "rb" else 12
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.schedule.name = "cosine"
  c.log_every_steps = 25
  c.checkpoint_every_steps = 125
  c.eval.batch_size = 128
  c.evals.pgd = eval_entry("pgd", eps=(AT_EPS,), attack=dict(num_steps=AT_STEPS, step_size=AT_STEP_SIZE),
                           max_examples=500)
  c.evals.pgd10 = eval_entry("pgd", eps=(AT_EPS,), attack=dict(num_steps=10), max_examples=500)
  # Table 2.1: DAG with gamma = 0.5, at most 200 iterations, the background spared.
  c.evals.dag = eval_entry("dag", max_examples=100)
  c.evals.figure = eval_entry("seg_figure", num_images=6, adversary="pgd",
                              attack=dict(eps=AT_EPS, num_steps=AT_STEPS, step_size=AT_STEP_SIZE))
  # Inpainting and generation (robust-segmentation paper, eqs. 6-7) on 100 canvases, judged by the ERM
  # digit classifier of `make train`; run alone with --config.eval.entries="('synthesis',)".
  c.evals.synthesis = eval_entry("synthesis", num_images=100, png_images=8,
                                 classifier_run="" if arg == "tiny" else BACKBONES[""])
  return c
