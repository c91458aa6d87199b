"""Feature-denoising adversarial training (Xie thesis ch. 4, sec. 4.5) on the embedded digits.

arg: the denoising variant, one of VARIANTS (default 'nonlocal_gaussian'):
  baseline            no block (the plain ResNet)
  null                a block whose operation is the identity (table 4.1's control)
  nonlocal_gaussian   non-local means, Gaussian (softmax) weights with 1x1 embeddings
  nonlocal_dot        non-local means, dot-product weights
  mean, median        3x3 mean and median filters
  bilateral_gaussian  the Gaussian weights over a 3x3 neighbourhood
  no_conv             nonlocal_gaussian without the 1x1 convolution
  no_residual         nonlocal_gaussian without the residual connection
A block follows each of the three stages of the small ResNet-14 (16-32-64).

The recipe of sec. 4.5, scaled to the digits (the thesis trains ImageNet at
eps = 16/255 with a 30-step attack): targeted PGD toward a uniformly drawn
wrong class at eps = 0.3 (76.5 in 0-255 units, the usual MNIST radius), 10
steps of 0.2 eps (the thesis' steps sum to 1.9 eps); 20% of the attacks
start from the clean image and 80% from a random point of the ball; the
weights are trained on adversarial images only, with label smoothing 0.1,
and the attack uses the running BatchNorm statistics. Evaluation: targeted
PGD with a random start at the same eps, step eps/16 (1.6 eps/16 for 10
iterations, as the thesis' 1 and 1.6 at eps 16), 10 and 100 iterations on
all held-out digits and 1000 on the first 200; accuracy is top-1 whatever
the target. Untargeted PGD-10 and PGD-100 at the same radius and steps as
well, since the targeted attacks leave these models near their clean
accuracy. Override `--config.seed` for the seeds of the README table.
"""

from advjax.config import base_config, eval_entry

VARIANTS = {
    "baseline": "", "null": "denoise:null", "nonlocal_gaussian": "denoise:nonlocal_gaussian",
    "nonlocal_dot": "denoise:nonlocal_dot", "mean": "denoise:mean", "median": "denoise:median",
    "bilateral_gaussian": "denoise:bilateral_gaussian", "no_conv": "denoise:nonlocal_gaussian,no_conv",
    "no_residual": "denoise:nonlocal_gaussian,no_residual",
}
EPS = 0.3 * 255


def get_config(arg=None):
  variant = arg or "nonlocal_gaussian"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = base_config()
  c.data.name = "mnist_embedded"
  c.model.name = "resnet14_small"
  c.model.insert_block = VARIANTS[variant]
  c.model.insert_after = "stages"
  c.objective = "pgd_at"
  c.adversarial.weight = 1.0
  c.loss.label_smoothing = 0.1
  c.adversarial.attack.eps = EPS
  c.adversarial.attack.step_size = 0.2 * EPS
  c.adversarial.attack.num_steps = 10
  c.adversarial.attack.targeted = True
  c.adversarial.attack.init = "mixed"
  c.adversarial.attack.clean_init_fraction = 0.2
  c.adversarial.bn_mode = "eval"
  c.batch_size = 64
  c.num_epochs = 8
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 0.5
  c.log_every_steps = 25
  c.checkpoint_every_steps = 250
  c.eval.batch_size = 200
  step = EPS / 16
  c.evals.pgd10 = eval_entry("pgd", eps=(EPS,), attack=dict(num_steps=10, step_size=1.6 * step, targeted=True))
  c.evals.pgd100 = eval_entry("pgd", eps=(EPS,), attack=dict(num_steps=100, step_size=step, targeted=True))
  c.evals.pgd1000 = eval_entry("pgd", eps=(EPS,), attack=dict(num_steps=1000, step_size=step, targeted=True),
                               max_examples=200)
  # Untargeted PGD too: a targeted attack only has to miss the true class through one
  # drawn target, so it leaves the digits' models near their clean accuracy.
  c.evals.pgd10_untargeted = eval_entry("pgd", eps=(EPS,), attack=dict(num_steps=10, step_size=1.6 * step))
  c.evals.pgd100_untargeted = eval_entry("pgd", eps=(EPS,), attack=dict(num_steps=100, step_size=step))
  if c.model.insert_block:
    # Figures 4.1 and 4.8: the features around the second stage's block, clean and attacked.
    c.evals.figure = eval_entry("denoise_figure", block="stage2_denoise",
                                attack=dict(eps=EPS, num_steps=10, step_size=0.2 * EPS))
  c.train_evals = tuple(c.evals.keys())  # All of them at the end of training (summary.json), for seeds.py.
  return c
