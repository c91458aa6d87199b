"""The base experiment config, its validation, and duration resolution.

Every experiment in `configs/` starts from `base_config()` and changes a few
fields. Configs hold only strings, numbers, booleans, tuples and nested
ConfigDicts, so any field can be overridden from the command line
(`--config.optimizer.learning_rate=0.01`) and logged. Names (`'convnet'`,
`'relu'`, `'mnist_embedded'`) resolve through the registries of the modules
that own them. Each field is documented once, here.

`validate(config)` runs before any work starts and turns every mistake into a
one-line `ConfigError` naming the field.
"""

import dataclasses
from typing import Any

import ml_collections

from advjax.attacks import pgd, universal
from advjax.errors import ConfigError

# Objectives with a train step in `advjax.training.objectives` (or, for the
# universal adversarial training ones, in `advjax.training.uat`; advprop in
# `advjax.training.advprop`).
OBJECTIVES = ("erm", "pgd_at", "shared_at", "uat_alternating", "uat_simultaneous", "advprop")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "piecewise", "cosine")
# Ascent rules for the universal perturbation of `advjax.training.uat`.
UAT_DELTA_RULES = ("fgsm", "sgd", "adam")


def base_config() -> ml_collections.ConfigDict:
  """Returns the config every experiment starts from, with each field documented."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed for init, data order, dropout and attacks.

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist_embedded"  # Registry name in advjax.data.
  c.data.data_dir = ""  # tfds data_dir; '' means the tfds default.
  c.data.image_size = 0  # Resize/crop side for ImageNet-like data; 0 keeps native size.
  c.data.class_subset = 0  # Keep only the first N classes (ImageNet subsets); 0 keeps all.
  c.data.augment = False  # Training augmentation (crop+flip for CIFAR/ImageNet).

  c.model = ml_collections.ConfigDict()
  c.model.name = "convnet"  # Registry name in advjax.models.
  c.model.activation = "relu"  # Registry name of the activation.
  c.model.norm = "batchnorm"  # 'batchnorm', 'groupnorm' or 'none'.
  c.model.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16'.

  c.objective = "erm"  # Training objective, one of OBJECTIVES.
  # sigma in sigma * L(adv) + (1 - sigma) * L(clean) for adversarial objectives.
  c.adv_weight = 1.0
  c.label_smoothing = 0.0  # Weight of the uniform distribution in training targets.
  # s of shared adversarial training: examples per heap sharing one perturbation;
  # must divide the per-device batch so heaps never straddle devices.
  c.sharedness = 1

  # The attack of adversarial training objectives: every field of
  # advjax.attacks.pgd.AttackConfig (documented there), eps and step sizes in
  # 0-255 pixel units. The default is PGD-7 with a random start at eps 8.
  c.attack = as_config_dict(pgd.AttackConfig(init="uniform", num_steps=7))

  # Universal adversarial training (objectives uat_alternating, uat_simultaneous;
  # Shafahi et al., algorithms 3 and 4): one perturbation delta, trained by
  # ascent alongside the weights.
  c.uat = ml_collections.ConfigDict()
  # Ascent rule for delta, one of UAT_DELTA_RULES: 'fgsm' delta += eps * sign(g)
  # (eq. 6), 'sgd' delta += step_size * g (eq. 7), 'adam' Adam ascent at rate step_size.
  c.uat.delta_rule = "fgsm"
  c.uat.eps = 8.0  # L-inf radius of delta, 0-255 units.
  # tau_delta of the 'sgd' and 'adam' rules, 0-255 units (Adam moves a pixel by
  # about this much per step; SGD scales the gradient on the [0, 1] image scale by it).
  c.uat.step_size = 1.0
  # beta of eq. 3: delta ascends the mean of min(CE, beta) so no single example
  # dominates; 0 ascends the plain CE of algorithms 3-4. Weights always descend the plain CE.
  c.uat.clip_beta = 0.0

  # AdvProp and the mixture-BN strategies (objective advprop; Xie thesis ch. 7,
  # algorithm 2, and ch. 6, sec. 6.4). Attack: c.attack (see
  # advjax.training.advprop.configure_attacker for the thesis' attackers).
  c.advprop = ml_collections.ConfigDict()
  # BN set of the adversarial examples: an auxiliary set name (AdvProp, MBN_adv),
  # or 'main' for the mixture BN (clean and adversarial images in one batch).
  c.advprop.adv_bn = "adv"
  # Auxiliary BN set of augmented clean images batch['image_aug'] (fine-grained AdvProp, 7.5.4; needs
  # data.augment, and then batch['image'] is the un-augmented view); '' none.
  c.advprop.aug_bn = ""
  c.advprop.clean_ratio = 1.0  # x of "100% adv + x% clean": fraction of each clean batch trained on (fig. 6.1).
  c.advprop.logit_pairing = 0.0  # Weight of adversarial logit pairing (ALP, sec. 6.4.1); 0 disables.
  c.advprop.project_eps_ball = True  # False: the unprojected GD attacker of sec. 7.5.4.
  c.advprop.running_stats_last_epochs = 0.0  # Train with running BN statistics for the last N epochs (table 6.2).
  c.advprop.eval_bn = "main"  # BN set used for evaluation: 'main' or a trained auxiliary set (table 6.1, 7.3).

  # Smooth adversarial training (Xie thesis ch. 5): smooth activations are
  # c.model.activation names; this is table 5.1's diagnostic of ReLU forward with
  # parametric softplus' derivative backward, for '' nobody, 'attacker', 'weights' or 'both'.
  c.sat = ml_collections.ConfigDict()
  c.sat.softplus_grad = ""
  c.sat.softplus_alpha = 10.0  # alpha of that backward pass, sigmoid(alpha x) (eq. 5.3).

  c.batch_size = 128  # Global batch size, split over all devices and hosts.
  c.num_epochs = 10.0  # Training length in epochs (used when num_steps is 0).
  c.num_steps = 0  # Training length in steps; overrides num_epochs when > 0.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"  # One of OPTIMIZERS.
  c.optimizer.learning_rate = 0.1  # Peak learning rate.
  c.optimizer.momentum = 0.9  # SGD/RMSProp momentum.
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9  # Adam betas.
  c.optimizer.b2 = 0.999
  c.optimizer.decay = 0.9  # RMSProp decay.
  c.optimizer.eps = 1e-8  # Adam/RMSProp epsilon.
  c.optimizer.weight_decay = 0.0  # L2 penalty on kernels only (biases and norm params excluded).

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"  # One of SCHEDULES.
  c.schedule.boundaries = ()  # Piecewise: epochs at which the rate is multiplied by decay_factor.
  c.schedule.decay_factor = 0.1
  c.schedule.warmup_epochs = 0.0  # Linear warm-up from 0 before the schedule.

  # Run directory whose latest checkpoint initialises the model (params and
  # batch statistics) of a fresh run, to fine-tune as the shared-AT paper does; '' starts from scratch.
  c.init_checkpoint = ""

  c.log_every_steps = 50  # Metrics cadence (metrics.jsonl, TensorBoard, progress line).
  c.checkpoint_every_steps = 500  # Checkpoint cadence; one is always written at the end.
  c.keep_checkpoints = 2  # Most recent checkpoints kept.

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500  # Global evaluation batch size.
  c.eval.split = "test"
  c.eval.num_examples = 0  # Evaluate on the first N held-out examples; 0 means all.
  c.eval.pgd_eps = ()  # eps values (0-255) at which to report accuracy under PGD; () skips.
  c.eval.pgd_steps = 40  # PGD-k steps of the evaluation attack.
  c.eval.pgd_step_size = 0.0  # 0-255 units; 0 means 2.5 * eps / steps (Madry et al.).
  c.eval.pgd_restarts = 1  # Random restarts, strongest kept per example.
  c.eval.pgd_targeted = False  # Targeted PGD toward a random wrong class.
  c.eval.eps_adv_delta = 0.0  # delta of the eps_adv(delta) search (shared-AT paper, 5.2); 0 skips.
  c.eval.eps_adv_search_steps = 10  # b: binary-search iterations on [0, 255].
  c.eval.eps_adv_attack_steps = 200  # PGD steps of each probe (annealed step size).
  c.eval.eps_uni_delta = 0.0  # delta of the eps_uni(delta) search (shared-AT paper, 5.2); 0 skips.
  c.eval.eps_uni_search_steps = 10  # b: binary-search iterations on [0, 255].
  c.eval.universal_batch_size = 16  # m_k: training examples per iteration of the universal adversary.
  # eps values (0-255) at which to report accuracy on held-out data with the universal
  # perturbation of eval.universal added, and its fooling ratio (the UAT paper's metric); () skips.
  c.eval.universal_eps = ()
  # Also fit the iterative DeepFool universal perturbation (UAT paper's algorithm 1) at each
  # universal_eps on this many training images, reporting accuracy and wall time of both attacks.
  c.eval.universal_deepfool_examples = 0
  c.eval.universal_deepfool_passes = 10  # Passes over those images at most (algorithm 1).
  c.eval.output_file = "eval.json"  # Name of eval.py's results file in the workdir.
  # The universal adversary of each probe: fields of advjax.attacks.universal.UniversalConfig
  # (its eps is set by the search); default the paper's K = 200, beta = 4, gamma = 0.975.
  c.eval.universal = as_config_dict(universal.shared_at_eval_config())

  # jax.distributed settings for multi-host runs; num_processes 1 means single host.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c


def as_config_dict(params: Any) -> ml_collections.ConfigDict:
  """A frozen config dataclass (AttackConfig, UniversalConfig) as a ConfigDict.

  Every field can then be overridden from the command line; a None default
  becomes a float placeholder so that it still has a type.
  """
  values = dataclasses.asdict(params)
  return ml_collections.ConfigDict(
      {k: ml_collections.config_dict.placeholder(float) if v is None else v for k, v in values.items()})



def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def _check_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every field of `config` must exist in the base config (catches typos in experiment files)."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in reference:
      raise ConfigError(f"config.{name}: no such field")
    if isinstance(value, ml_collections.ConfigDict) and isinstance(reference[key], ml_collections.ConfigDict):
      _check_fields(value, reference[key], prefix=f"{name}.")


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Checks a config before any work starts.

  Registry names (model, activation, dataset, attack fields) are checked by
  the modules that own them when they are built; this checks the fields that
  the training loop itself interprets.

  Args:
    config: an experiment config derived from `base_config()`.
    num_devices: total number of devices the global batch is split over.

  Raises:
    ConfigError: naming the first bad field.
  """
  _check_fields(config, base_config())
  _require(config.objective in OBJECTIVES, "objective", f"unknown objective {config.objective!r}; known: {', '.join(OBJECTIVES)}")
  _require(config.batch_size > 0, "batch_size", "must be positive")
  _require(config.batch_size % num_devices == 0, "batch_size",
           f"{config.batch_size} is not divisible by the {num_devices} devices")
  _require(config.num_steps > 0 or config.num_epochs > 0, "num_epochs", "num_epochs or num_steps must be positive")
  _require(0.0 <= config.adv_weight <= 1.0, "adv_weight", "sigma must be in [0, 1]")
  _require(0.0 <= config.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
  _require(config.optimizer.name in OPTIMIZERS, "optimizer.name",
           f"unknown optimizer {config.optimizer.name!r}; known: {', '.join(OPTIMIZERS)}")
  _require(config.optimizer.learning_rate >= 0, "optimizer.learning_rate", "must be non-negative")
  _require(config.schedule.name in SCHEDULES, "schedule.name",
           f"unknown schedule {config.schedule.name!r}; known: {', '.join(SCHEDULES)}")
  _require(list(config.schedule.boundaries) == sorted(config.schedule.boundaries), "schedule.boundaries",
           "must be increasing")
  _require(config.log_every_steps > 0, "log_every_steps", "must be positive")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
  _require(config.keep_checkpoints > 0, "keep_checkpoints", "must be positive")
  _require(config.eval.batch_size > 0 and config.eval.batch_size % num_devices == 0, "eval.batch_size",
           f"{config.eval.batch_size} must be positive and divisible by the {num_devices} devices")
  _require(config.model.dtype in ("float32", "bfloat16"), "model.dtype", "must be 'float32' or 'bfloat16'")
  _require(config.eval.eps_adv_delta == 0 or 0 < config.eval.eps_adv_delta <= 1, "eval.eps_adv_delta",
           "must be in (0, 1], or 0 to skip")
  _require(all(0 < e <= 255 for e in config.eval.pgd_eps), "eval.pgd_eps", "eps values must be in (0, 255]")
  _require(config.eval.eps_uni_delta == 0 or 0 < config.eval.eps_uni_delta <= 1, "eval.eps_uni_delta",
           "must be in (0, 1], or 0 to skip")
  _require(config.eval.universal_batch_size > 0 and config.eval.universal_batch_size % num_devices == 0,
           "eval.universal_batch_size", f"must be positive and divisible by the {num_devices} devices")
  _require(all(0 < e <= 255 for e in config.eval.universal_eps), "eval.universal_eps",
           "eps values must be in (0, 255]")
  _require(config.eval.output_file.endswith(".json") and "/" not in config.eval.output_file, "eval.output_file",
           "must be a file name ending in .json")
  per_device = config.batch_size // num_devices
  _require(config.sharedness > 0 and per_device % config.sharedness == 0, "sharedness",
           f"s={config.sharedness} must divide the per-device batch {per_device} "
           f"(batch_size {config.batch_size} over {num_devices} devices) so heaps never straddle devices")
  try:
    universal.UniversalConfig.from_config(config.eval.universal)
  except ConfigError as e:
    raise ConfigError(f"config.eval.universal: {e}") from e
  _require(config.uat.delta_rule in UAT_DELTA_RULES, "uat.delta_rule",
           f"unknown rule {config.uat.delta_rule!r}; known: {', '.join(UAT_DELTA_RULES)}")
  _require(0 < config.uat.eps <= 255, "uat.eps", "must be in (0, 255]")
  _require(config.uat.step_size >= 0, "uat.step_size", "must be non-negative")
  _require(config.uat.clip_beta >= 0, "uat.clip_beta", "must be non-negative (0 means no clipping)")
  _validate_advprop_sat(config)
  try:
    pgd.AttackConfig.from_config(config.attack)
  except ConfigError as e:
    raise ConfigError(f"config.attack: {e}") from e


def _validate_advprop_sat(config: ml_collections.ConfigDict) -> None:
  """The fields of the advprop and sat blocks."""
  a = config.advprop
  _require(bool(a.adv_bn) and (a.adv_bn == "main" or a.adv_bn.isidentifier()), "advprop.adv_bn",
           "must be 'main' or an identifier naming an auxiliary BN set")
  _require(a.aug_bn == "" or (a.aug_bn.isidentifier() and a.aug_bn not in ("main", a.adv_bn)),
           "advprop.aug_bn", "must be '' or an auxiliary set name other than 'main' and adv_bn")
  _require(not (config.objective == "advprop" and a.aug_bn) or config.data.augment, "advprop.aug_bn",
           "trains on the augmented view of each image, so data.augment must be True")
  _require(0.0 <= a.clean_ratio <= 1.0, "advprop.clean_ratio", "must be in [0, 1]")
  _require(a.logit_pairing >= 0, "advprop.logit_pairing", "must be non-negative")
  _require(a.logit_pairing == 0 or a.clean_ratio > 0, "advprop.logit_pairing",
           "pairs clean and adversarial logits, so clean_ratio must be positive")
  _require(a.running_stats_last_epochs >= 0, "advprop.running_stats_last_epochs", "must be non-negative")
  trained = ("main",) if config.objective != "advprop" else ("main", a.adv_bn, a.aug_bn)
  _require(a.eval_bn in trained, "advprop.eval_bn",
           f"{a.eval_bn!r} is not a trained BN set; known: {', '.join(repr(t) for t in trained if t)}")
  _require(config.sat.softplus_grad in ("", "attacker", "weights", "both"), "sat.softplus_grad",
           "must be '', 'attacker', 'weights' or 'both'")
  _require(not config.sat.softplus_grad or config.model.activation == "relu", "sat.softplus_grad",
           f"smooths ReLU's backward pass, so model.activation must be 'relu', not {config.model.activation!r}")
  _require(config.sat.softplus_alpha > 0, "sat.softplus_alpha", "must be positive")


def resolve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Total number of training steps: `num_steps` if set, else epochs times steps per epoch."""
  if config.num_steps > 0:
    return int(config.num_steps)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serialisable copy of the config (tuples become lists)."""
  return config.to_dict()
