"""The base experiment config, its validation, and duration resolution.

Every experiment in `configs/` starts from `base_config()` and changes a few
fields. Configs hold only strings, numbers, booleans, tuples and nested
ConfigDicts, so any field can be overridden from the command line
(`--config.optimizer.learning_rate=0.01`) and logged. Names (`'convnet'`,
`'relu'`, `'mnist_embedded'`, `'pgd_at'`, `'eps_adv'`) resolve through the
registries of the modules that own them. Each field is documented once, here
or in the block its owner contributes (`config.attack`: the fields of
`advjax.attacks.pgd.AttackConfig`; `config.uat`, `config.advprop`: the
objectives that read them; `config.sat`: `advjax.training.sat`).

This module sits at the top of the package's dependency graph: it composes
the blocks of the attacks, objectives and evaluators, and nothing in the
library imports it except the drivers (`advjax.experiment`, `advjax.runs`,
`advjax.sweep`, `advjax.cli`).

`validate(config)` runs before any work starts and turns every mistake into a
one-line `ConfigError` naming the field: the generic fields here, the
objective's fields by the objective (`Objective.validate`) and every
`config.evals` entry by its evaluator.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from advjax import attacks, evaluation, models
from advjax.attacks import pgd
from advjax.errors import ConfigError
from advjax.training import objectives, optim, sat

DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
  """Returns the config every experiment starts from, with each field documented."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed for init, data order, dropout, attacks and evaluation.

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist_embedded"  # Registry name in advjax.data.
  c.data.data_dir = ""  # tfds data_dir; '' means the tfds default.
  # Output size, 0 = native: the crop side for variable-size (ImageNet-like)
  # data, the height for fixed-size data (the width keeps the aspect ratio;
  # Cityscapes at 512 is 512x1024).
  c.data.image_size = 0
  c.data.class_subset = 0  # Keep only the first N classes (ImageNet subsets); 0 keeps all.
  c.data.augment = False  # Training augmentation (crop+flip for CIFAR/ImageNet).

  c.model = ml_collections.ConfigDict()
  c.model.name = "convnet"  # Backbone registry name in advjax.models.MODELS.
  c.model.head = "classifier"  # Head registry name in advjax.models.HEADS.
  c.model.activation = "relu"  # Registry name of the activation.
  c.model.norm = "batchnorm"  # 'batchnorm[:momentum]', 'groupnorm' or 'none'.
  c.model.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16'.
  # A block inserted into the backbone by registry name (advjax.models.blocks,
  # e.g. 'denoise:nonlocal_gaussian'), '' for none, after 'stages', 'blocks' or
  # the comma-separated positions of `insert_after` ('stage2,stage3').
  c.model.insert_block = ""
  c.model.insert_after = "stages"
  # Run directory whose latest checkpoint initialises the backbone (every
  # variable outside the head), e.g. a robust classifier under a segmentation
  # head; '' for none. With freeze_backbone its weights stay fixed and it
  # normalises with its running statistics (the robust-backbone model). The
  # model then normalises its inputs with that run's dataset statistics (as
  # pretrained backbones keep theirs), so fine-tunings and evaluations of it
  # keep this field.
  c.model.backbone_checkpoint = ""
  c.model.freeze_backbone = False

  c.objective = "erm"  # Training objective, a key of advjax.training.objectives.OBJECTIVES.
  # sigma in sigma * L(adv) + (1 - sigma) * L(clean) for adversarial objectives.
  c.adv_weight = 1.0
  c.label_smoothing = 0.0  # Weight of the uniform distribution in training targets.
  # w in L(out) + w L(aux) for heads with an auxiliary classifier ('fcn_aux'; torchvision: 0.5).
  c.aux_loss_weight = 0.0
  # s of shared adversarial training: examples per heap sharing one perturbation;
  # must divide the per-device batch so heaps never straddle devices.
  c.sharedness = 1

  # The attack of adversarial training objectives: every field of
  # advjax.attacks.pgd.AttackConfig (documented there), eps and step sizes in
  # 0-255 pixel units. The default is PGD-7 with a random start at eps 8.
  c.attack = as_config_dict(pgd.AttackConfig(init="uniform", num_steps=7))
  # BatchNorm while the training attack runs: 'eval' normalises with the
  # running statistics, 'batch' with the attacked batch's (never updated).
  c.attack_bn_mode = "eval"

  # The objectives' own blocks: config.uat (universal adversarial training) and
  # config.advprop (AdvProp and the mixture-BN strategies), documented there.
  for cls in dict.fromkeys(objectives.OBJECTIVES.values()):
    block = cls.config_block()
    if block is not None:
      c[block[0]] = block[1]
  # Smooth adversarial training's softplus-gradient diagnostic (advjax.training.sat).
  c.sat = sat.config_block()

  c.batch_size = 128  # Global batch size, split over all devices and hosts.
  c.num_epochs = 10.0  # Training length in epochs (used when num_steps is 0).
  c.num_steps = 0  # Training length in steps; overrides num_epochs when > 0.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"  # One of advjax.training.optim.OPTIMIZERS.
  c.optimizer.learning_rate = 0.1  # Peak learning rate.
  c.optimizer.momentum = 0.9  # SGD/RMSProp momentum.
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9  # Adam betas.
  c.optimizer.b2 = 0.999
  c.optimizer.decay = 0.9  # RMSProp decay.
  c.optimizer.eps = 1e-8  # Adam/RMSProp epsilon.
  c.optimizer.weight_decay = 0.0  # L2 penalty on kernels only (biases and norm params excluded).

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "constant"  # One of advjax.training.optim.LR_SCHEDULES.
  c.schedule.boundaries = ()  # Piecewise: epochs at which the rate is multiplied by decay_factor.
  c.schedule.decay_factor = 0.1
  c.schedule.warmup_epochs = 0.0  # Linear warm-up from 0 before the schedule.

  # Run directory whose latest checkpoint initialises the model (params and
  # batch statistics) of a fresh run, to fine-tune as the shared-AT paper does; '' starts from scratch.
  c.init_checkpoint = ""

  # A step whose loss, gradient norm or new state is not finite: 'stop' the run
  # with an error before anything from it is saved, or 'skip' it (undone in the step).
  c.nonfinite = "stop"

  c.log_every_steps = 50  # Metrics cadence (metrics.jsonl, TensorBoard, progress line).
  c.checkpoint_every_steps = 500  # Checkpoint cadence; one is always written at the end.
  c.keep_checkpoints = 2  # Most recent checkpoints kept.

  # The held-out data every evaluation uses.
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500  # Global evaluation batch size.
  c.eval.split = "test"
  c.eval.num_examples = 0  # Evaluate on the first N held-out examples; 0 means all.
  c.eval.output_file = "eval.json"  # Name of eval.py's results file in the workdir.
  # eval.py runs only these config.evals entries (e.g. "('synthesis',)"); () runs them all.
  c.eval.entries = ()
  # eval.py refuses a config whose model fields differ from the run's config.json; True allows it.
  c.eval.cross_evaluate = False

  # What eval.py measures, big_vision style: entry name -> {'type': a key of
  # advjax.evaluation.EVALUATORS, **its arguments} (each evaluator's Args
  # documents them: 'clean', 'pgd', 'eps_adv', 'eps_uni', 'universal', ...).
  c.evals = ml_collections.ConfigDict()
  c.evals.clean = eval_entry("clean")
  # The entries of config.evals run at the end of training (results in summary.json).
  c.train_evals = ("clean",)

  # jax.distributed settings for multi-host runs; num_processes 1 means single host.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c


def eval_entry(kind: str, **args) -> ml_collections.ConfigDict:
  """A `config.evals` entry of evaluator `kind`: every argument with its default, then `args`.

  Holding every field makes each one overridable from the command line
  (`--config.evals.pgd.steps=100`).

  Raises:
    ConfigError: unknown evaluator, or an argument it does not take.
  """
  if kind not in evaluation.EVALUATORS:
    raise ConfigError(f"unknown evaluator {kind!r}; known: {', '.join(sorted(evaluation.EVALUATORS))}")
  defaults = dataclasses.asdict(evaluation.EVALUATORS[kind].Args())
  unknown = sorted(set(args) - set(defaults))
  if unknown:
    raise ConfigError(f"evaluator {kind!r} takes no argument(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
  return ml_collections.ConfigDict({"type": kind, **defaults, **args})


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


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# Numeric fields: (lowest, highest, whether the lowest is allowed, whether it must be an integer).
# Every one must also be finite. Attack, universal, UAT and AdvProp blocks and
# evaluator arguments are checked by their owners.
_RANGES = {
    "seed": (0, 2**32 - 1, True, True),
    "data.image_size": (0, 16384, True, True),
    "data.class_subset": (0, 1_000_000, True, True),
    "batch_size": (1, 2**24, True, True),
    "num_epochs": (0, 1e6, True, False),
    "num_steps": (0, 2**31 - 1, True, True),
    "adv_weight": (0.0, 1.0, True, False),
    "label_smoothing": (0.0, 0.999, True, False),
    "aux_loss_weight": (0.0, 100.0, True, False),
    "sharedness": (1, 2**24, True, True),
    "optimizer.learning_rate": (0.0, 1e3, True, False),
    "optimizer.momentum": (0.0, 0.9999, True, False),
    "optimizer.b1": (0.0, 0.9999, True, False),
    "optimizer.b2": (0.0, 0.999999, True, False),
    "optimizer.decay": (0.0, 0.9999, True, False),
    "optimizer.eps": (0.0, 1.0, False, False),
    "optimizer.weight_decay": (0.0, 1.0, True, False),
    "schedule.decay_factor": (0.0, 1e3, False, False),
    "schedule.warmup_epochs": (0.0, 1e6, True, False),
    "log_every_steps": (1, 2**31 - 1, True, True),
    "checkpoint_every_steps": (1, 2**31 - 1, True, True),
    "keep_checkpoints": (1, 10_000, True, True),
    "eval.batch_size": (1, 2**24, True, True),
    "eval.num_examples": (0, 2**31 - 1, True, True),
    "sat.softplus_alpha": (0.0, 1e6, False, False),
}


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every numeric field is a finite number of the right kind inside its range."""
  for field, (low, high, low_ok, integer) in _RANGES.items():
    node = config
    for key in field.split("."):
      node = node[key]
    ok = _number(node) and math.isfinite(node) and (not integer or float(node) == int(node))
    ok = ok and (low <= node if low_ok else low < node) and node <= high
    if not ok:
      kind = "an integer" if integer else "a finite number"
      bound = "[" if low_ok else "("
      _require(False, field, f"must be {kind} in {bound}{low}, {high}], got {node!r}")
  boundaries = config.schedule.boundaries
  _require(all(_number(b) and math.isfinite(b) and b >= 0 for b in boundaries), "schedule.boundaries",
           f"must be finite, non-negative epochs, got {tuple(boundaries)!r}")
  _require(config.nonfinite in ("stop", "skip"), "nonfinite", f"must be 'stop' or 'skip', not {config.nonfinite!r}")


def _check_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every field of `config` must exist in the base config (catches typos in experiment files).

  `evals` entries are free-form (each evaluator checks its own arguments).
  """
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in reference:
      raise ConfigError(f"config.{name}: no such field")
    if name == "evals":
      continue
    if isinstance(value, ml_collections.ConfigDict) and isinstance(reference[key], ml_collections.ConfigDict):
      _check_fields(value, reference[key], prefix=f"{name}.")


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Checks a config before any work starts.

  The generic fields are checked here; the objective checks the fields it
  reads and every `config.evals` entry is parsed by its evaluator. Registry
  names of models, activations and datasets are checked when they are built.

  Args:
    config: an experiment config derived from `base_config()`.
    num_devices: total number of devices the global batch is split over.

  Raises:
    ConfigError: naming the first bad field.
  """
  _check_fields(config, base_config())
  _check_ranges(config)
  try:
    objective = objectives.get(config.objective)
  except ConfigError as e:
    raise ConfigError(f"config.objective: {e}") from None
  _require(config.batch_size > 0, "batch_size", "must be positive")
  _require(config.batch_size % num_devices == 0, "batch_size",
           f"{config.batch_size} is not divisible by the {num_devices} devices")
  _require(config.num_steps > 0 or config.num_epochs > 0, "num_epochs", "num_epochs or num_steps must be positive")
  _require(math.isfinite(config.num_epochs), "num_epochs", "must be finite")
  _require(0.0 <= config.adv_weight <= 1.0, "adv_weight", "sigma must be in [0, 1]")
  _require(0.0 <= config.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
  _require(config.aux_loss_weight == 0.0 or objective.supports_aux_loss, "aux_loss_weight",
           f"the {config.objective!r} objective does not train an auxiliary classifier; keep it 0")
  _require(config.optimizer.name in optim.OPTIMIZERS, "optimizer.name",
           f"unknown optimizer {config.optimizer.name!r}; known: {', '.join(optim.OPTIMIZERS)}")
  _require(config.schedule.name in optim.LR_SCHEDULES, "schedule.name",
           f"unknown schedule {config.schedule.name!r}; known: {', '.join(optim.LR_SCHEDULES)}")
  _require(list(config.schedule.boundaries) == sorted(config.schedule.boundaries), "schedule.boundaries",
           "must be increasing")
  _require(config.log_every_steps > 0, "log_every_steps", "must be positive")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
  _require(config.keep_checkpoints > 0, "keep_checkpoints", "must be positive")
  _require(config.eval.batch_size > 0 and config.eval.batch_size % num_devices == 0, "eval.batch_size",
           f"{config.eval.batch_size} must be positive and divisible by the {num_devices} devices")
  _require(config.model.dtype in DTYPES, "model.dtype", f"must be one of {', '.join(DTYPES)}")
  _require(config.attack_bn_mode in attacks.BN_MODES, "attack_bn_mode",
           f"unknown mode {config.attack_bn_mode!r}; known: {', '.join(attacks.BN_MODES)}")
  _require(not config.model.freeze_backbone or bool(config.model.backbone_checkpoint), "model.freeze_backbone",
           "freezes a pretrained backbone, so model.backbone_checkpoint must name a run")
  _require(config.eval.output_file.endswith(".json") and "/" not in config.eval.output_file, "eval.output_file",
           "must be a file name ending in .json")
  per_device = config.batch_size // num_devices
  _require(config.sharedness > 0 and per_device % config.sharedness == 0, "sharedness",
           f"s={config.sharedness} must divide the per-device batch {per_device} "
           f"(batch_size {config.batch_size} over {num_devices} devices) so heaps never straddle devices")
  for name, entry in config.evals.items():
    size = entry.get("batch_size", 0) if hasattr(entry, "get") else 0
    _require(not size or size % num_devices == 0, f"evals.{name}.batch_size",
             f"{size} must be divisible by the {num_devices} devices")
  evaluation.parse(config.evals)
  evaluation.parse(config.evals, tuple(config.train_evals))  # The names must be entries.
  evaluation.parse(config.evals, tuple(config.eval.entries))
  objective.validate(config)
  if config.model.insert_block:
    models.blocks.check_block(config.model.insert_block)


def resolve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Total number of training steps: `num_steps` if set, else epochs times steps per epoch."""
  if config.num_steps > 0:
    return int(config.num_steps)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serialisable copy of the config (tuples become lists)."""
  return config.to_dict()
