"""A small FCN on the embedded digit canvases (mnist_seg_embedded): the segmentation default.

64x64 canvases of 1-3 MNIST digits, 11 classes (background and the ten
digits). The backbone is the convnet of the universality paper (its three
conv-conv-pool stages, at 1/2, 1/4 and 1/8 resolution) and the head is
FCN-8s (score layers on the three stages, learned 2x upsampling, bilinear to
the input size). Adam with a cosine schedule. eval.py measures pixel
accuracy and mIoU clean and under per-pixel PGD, DAG (the thesis' table 2.1)
and draws the predictions; arg 'tiny' uses convnet_tiny (for tests).
"""

from advjax.config import base_config, eval_entry


def get_config(arg=None):
  c = base_config()
  c.data.name = "mnist_seg_embedded"
  c.model.name = "convnet_tiny" if arg == "tiny" else "convnet"
  c.model.head = "fcn8s_fc:256,256"
  c.batch_size = 32
  c.num_epochs = 16
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-3
  c.schedule.name = "cosine"
  c.log_every_steps = 25
  c.checkpoint_every_steps = 125
  c.eval.batch_size = 100
  # Per-pixel PGD (10 steps of 2) at eps 8 and 16 on the test canvases.
  c.evals.pgd = eval_entry("pgd", eps=(8.0, 16.0), steps=10, step_size=2.0)
  # Table 2.1: DAG with gamma = 0.5, at most 200 iterations, the background spared.
  c.evals.dag = eval_entry("dag", max_examples=200)
  c.evals.figure = eval_entry("seg_figure", num_images=6, attack="pgd", eps=16.0, steps=10, step_size=4.0)
  return c
