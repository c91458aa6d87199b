"""Feature denoising on ImageNet (Xie thesis ch. 4): ResNet-152 with four non-local Gaussian blocks.

arg: 'resnet152' (default; one block after each of res2..res5) or
'resnext101' (ResNeXt-101 32x8d, the CAAD 2018 entry), optionally
',blocks' to put a block after every residual block (sec. 4.6, keys
subsampled by 2x2 max pooling).

The recipe of sec. 4.5: targeted PGD toward a uniformly drawn wrong class at
eps = 16, step 1, 30 iterations, starting from the clean image for 20% of the
examples and from a random point of the ball for the rest; the weights are
trained on the adversarial images only, with label smoothing 0.1, and the
attack uses the running BatchNorm statistics. 110 epochs, the learning rate
divided by 10 at epochs 35, 70 and 95, scaled linearly with the global batch
(0.1 per 256 images) after a 5-epoch warm-up (Goyal et al. 2017), SGD with
momentum 0.9 and weight decay 1e-4. Evaluation: targeted PGD with a random
start at eps = 16, step 1 (1.6 for 10 iterations), for 10, 100, 1000 and
2000 iterations; top-1 accuracy whatever the target.
"""

from advjax.config import base_config, eval_entry


def get_config(arg=None):
  model, _, placement = (arg or "resnet152").partition(",")
  names = {"resnet152": "resnet152", "resnext101": "resnext101_32x8d"}
  if model not in names or placement not in ("", "blocks"):
    raise ValueError(f"arg {arg!r}: expected resnet152|resnext101[,blocks]")
  c = base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.augment = True
  c.model.name = names[model]
  c.model.insert_block = "denoise:nonlocal_gaussian"
  c.model.insert_after = placement or "stages"
  c.objective = "pgd_at"
  c.adversarial.weight = 1.0
  c.loss.label_smoothing = 0.1
  c.adversarial.attack.eps = 16.0
  c.adversarial.attack.step_size = 1.0
  c.adversarial.attack.num_steps = 30
  c.adversarial.attack.targeted = True
  c.adversarial.attack.init = "mixed"
  c.adversarial.attack.clean_init_fraction = 0.2
  c.adversarial.bn_mode = "eval"
  c.batch_size = 4096
  c.num_epochs = 110
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1 * c.batch_size / 256
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (35.0, 70.0, 95.0)
  c.schedule.decay_factor = 0.1
  c.schedule.warmup_epochs = 5.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.batch_size = 1000
  c.eval.split = "validation"
  for steps in (10, 100, 1000, 2000):
    c.evals[f"pgd{steps}"] = eval_entry("pgd", eps=(16.0,), attack=dict(
        num_steps=steps, step_size=1.6 if steps == 10 else 1.0, targeted=True))
  return c
