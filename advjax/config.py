"""The base experiment config, composed from the typed blocks of the modules that own them.

Every experiment in `configs/` starts from `base_config()` and changes a few
fields. Configs hold only strings, numbers, booleans, tuples and nested
ConfigDicts, so any field can be overridden from the command line
(`--config.optimizer.learning_rate=0.01`) and logged. Names (`'convnet'`,
`'relu'`, `'mnist_embedded'`, `'pgd_at'`, `'eps_adv'`) resolve through the
registries of the modules that own them.

Each block is a frozen dataclass declared once, by its owner, with its
defaults and the checks of its fields (`advjax.typed_config`):

  data           `advjax.data.DataConfig`
  model          `advjax.models.ModelConfig`
  loss           `advjax.training.objectives.LossConfig` (every objective's)
  adversarial    `AdversarialConfig` of the objectives `pgd_at` and `shared_at`
  uat            `UATConfig` of `uat_alternating` and `uat_simultaneous`
  advprop        `AdvPropConfig` of `advprop`
  optimizer      `advjax.training.optim.OptimizerConfig`
  schedule       `advjax.training.optim.ScheduleConfig`
  eval           `advjax.evaluation.EvalConfig`
  evals          entry name -> {'type': an evaluator, **its `Args`} (`eval_entry`)
  distributed    `advjax.parallel.DistributedConfig`

and the root fields are `RunConfig`'s, below. `validate(config)` runs before
any work starts: it parses every block, whether the objective uses it or not,
so a bad value anywhere is one `ConfigError` naming the field, and then
checks what relates blocks to each other (the batch and the devices, the
objective's relations to the model, the evaluation entries' names). The
objective then receives its own block typed (`parse`), never the ConfigDict.

This module sits at the top of the package's dependency graph: it composes
the blocks of the data, models, attacks, objectives and evaluators, and
nothing in the library imports it except the drivers (`advjax.experiment`,
`advjax.runs`, `advjax.sweep`, `advjax.cli`).
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from advjax import data, evaluation, models, parallel, typed_config
from advjax.errors import ConfigError
from advjax.training import objectives, optim, steps

# Root fields of earlier versions, and where they live now.
RENAMED = {
    "adv_weight": "adversarial.weight", "sharedness": "adversarial.heap_size", "attack": "adversarial.attack",
    "attack_bn_mode": "adversarial.bn_mode", "sat": "adversarial.sat", "label_smoothing": "loss.label_smoothing",
    "aux_loss_weight": "loss.aux_weight",
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The root fields of an experiment config.

  Attributes:
    seed: one seed for init, data order, dropout, attacks and evaluation.
    objective: training objective, a key of `objectives.OBJECTIVES`.
    batch_size: global batch size, split over all devices and hosts.
    num_epochs: training length in epochs (used when num_steps is 0).
    num_steps: training length in steps; overrides num_epochs when > 0.
    init_checkpoint: run directory whose latest checkpoint initialises the
      model (params and batch statistics) of a fresh run, to fine-tune as the
      shared-AT paper does; '' starts from scratch.
    nonfinite: a step whose loss, gradient norm or new state is not finite:
      'stop' the run with an error before anything from it is saved, or
      'skip' it (undone in the step).
    log_every_steps: metrics cadence (metrics.jsonl, TensorBoard, progress line).
    checkpoint_every_steps: checkpoint cadence; one is always written at the end.
    keep_checkpoints: most recent checkpoints kept.
    train_evals: the entries of `config.evals` run at the end of training
      (results in summary.json).
  """
  seed: int = 0
  objective: str = "erm"
  batch_size: int = 128
  num_epochs: float = 10.0
  num_steps: int = 0
  init_checkpoint: str = ""
  nonfinite: str = "stop"
  log_every_steps: int = 50
  checkpoint_every_steps: int = 500
  keep_checkpoints: int = 2
  train_evals: tuple = ("clean",)

  def __post_init__(self):
    for field, low, high in (("seed", 0, 2**32 - 1), ("batch_size", 1, 2**24), ("num_steps", 0, 2**31 - 1),
                             ("log_every_steps", 1, 2**31 - 1), ("checkpoint_every_steps", 1, 2**31 - 1),
                             ("keep_checkpoints", 1, 10_000)):
      value = getattr(self, field)
      if not low <= value <= high:
        raise ConfigError(f"{field}: must be an integer in [{low}, {high}], got {value!r}")
    if not (math.isfinite(self.num_epochs) and 0 <= self.num_epochs <= 1e6):
      raise ConfigError(f"num_epochs: must be a finite number in [0, 1e6], got {self.num_epochs!r}")
    if self.num_steps == 0 and self.num_epochs == 0:
      raise ConfigError("num_epochs: num_epochs or num_steps must be positive")
    if self.nonfinite not in steps.NONFINITE_MODES:
      raise ConfigError(f"nonfinite: must be one of {', '.join(steps.NONFINITE_MODES)}, not {self.nonfinite!r}")
    try:
      objectives.get(self.objective)
    except ConfigError as e:
      raise ConfigError(f"objective: {e}") from None


def _blocks() -> dict[str, Any]:
  """Block name -> its default (a dataclass instance), in the order of the base config."""
  out = {"data": data.DataConfig(), "model": models.ModelConfig(), "loss": objectives.LossConfig()}
  for cls in dict.fromkeys(objectives.OBJECTIVES.values()):
    if cls.BLOCK is not None:
      out.setdefault(cls.BLOCK, cls.Config())
  out.update(optimizer=optim.OptimizerConfig(), schedule=optim.ScheduleConfig(), eval=evaluation.EvalConfig(),
             distributed=parallel.DistributedConfig())
  return out


def base_config() -> ml_collections.ConfigDict:
  """Returns the config every experiment starts from: every field of every block, with its default."""
  root = typed_config.to_dict(RunConfig())
  c = ml_collections.ConfigDict({k: v for k, v in root.items() if k != "train_evals"})
  for name, block in _blocks().items():
    c[name] = typed_config.as_config_dict(block)
  c.evals = ml_collections.ConfigDict()
  c.evals.clean = eval_entry("clean")
  c.train_evals = root["train_evals"]
  return c


def eval_entry(kind: str, **args) -> ml_collections.ConfigDict:
  """A `config.evals` entry of evaluator `kind`: every argument with its default, then `args`.

  Holding every field makes each one overridable from the command line
  (`--config.evals.pgd.attack.num_steps=100`). A nested block given in part
  (`attack=dict(num_steps=100)`) changes only those fields of its default.

  Raises:
    ConfigError: unknown evaluator, or an argument it does not take (or a
      bad value, which the evaluator refuses).
  """
  cls = evaluation.EVALUATORS[kind]
  label = f"eval_entry({kind!r})"
  args = typed_config.to_dict(typed_config.from_mapping(cls.Args, args, label))
  return typed_config.as_config_dict({"type": kind, **args})


def as_config_dict(block: Any) -> ml_collections.ConfigDict:
  """A typed block (an AttackConfig, a UniversalConfig, ...) as a ConfigDict with every field."""
  return typed_config.as_config_dict(block)


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A validated config's typed blocks.

  Attributes:
    run: the root fields.
    blocks: block name -> its dataclass instance.
    evals: entry name -> (evaluator class, its parsed Args).
  """
  run: RunConfig
  blocks: dict[str, Any]
  evals: dict[str, tuple[type, Any]]

  def objective_block(self) -> Any:
    """The typed block of the config's objective, or None if it has none."""
    cls = objectives.get(self.run.objective)
    return None if cls.BLOCK is None else self.blocks[cls.BLOCK]


def _check_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every field of `config` must exist in the base config (catches typos in experiment files).

  `evals` entries are free-form (each evaluator checks its own arguments).
  """
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in reference:
      if name in RENAMED:
        raise ConfigError(f"config.{name} is now config.{RENAMED[name]}")
      raise ConfigError(f"config.{name}: no such field")
    if name == "evals":
      continue
    if isinstance(value, ml_collections.ConfigDict) and isinstance(reference[key], ml_collections.ConfigDict):
      _check_fields(value, reference[key], prefix=f"{name}.")


def parse(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Parsed:
  """Every block of `config` as its dataclass, each checked by its owner (one ConfigError naming the field).

  Raises:
    ConfigError: naming the first bad field.
  """
  root_fields = {f.name for f in dataclasses.fields(RunConfig)}
  run = typed_config.from_mapping(RunConfig, {k: v for k, v in config.items() if k in root_fields}, "config")
  blocks = {name: typed_config.from_mapping(default, config[name], f"config.{name}")
            for name, default in _blocks().items() if name in config}
  return Parsed(run, blocks, evaluation.parse(config["evals"]))


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> Parsed:
  """Checks a config before any work starts; returns its typed blocks.

  Every block is parsed by its owner, used by the objective or not; then the
  relations between blocks: the batch and the devices, the evaluation
  entries' names, the objective's own relations (`Objective.validate`).
  Registry names of models, activations and datasets are checked when they
  are built, before the first step.

  Args:
    config: an experiment config derived from `base_config()`.
    num_devices: total number of devices the global batch is split over.

  Raises:
    ConfigError: naming the first bad field.
  """
  _check_fields(config, base_config())
  parsed = parse(config)
  run, blocks = parsed.run, parsed.blocks

  def require(ok, field, message):
    if not ok:
      raise ConfigError(f"config.{field}: {message}")

  objective = objectives.get(run.objective)
  require(run.batch_size % num_devices == 0, "batch_size",
          f"{run.batch_size} is not divisible by the {num_devices} devices")
  require(blocks["eval"].batch_size % num_devices == 0, "eval.batch_size",
          f"{blocks['eval'].batch_size} must be divisible by the {num_devices} devices")
  require(blocks["loss"].aux_weight == 0.0 or objective.supports_aux_loss, "loss.aux_weight",
          f"the {run.objective!r} objective does not train an auxiliary classifier; keep it 0")
  for name, entry in config.evals.items():
    size = entry.get("batch_size", 0) if hasattr(entry, "get") else 0
    require(not size or size % num_devices == 0, f"evals.{name}.batch_size",
            f"{size} must be divisible by the {num_devices} devices")
  evaluation.parse(config.evals, tuple(run.train_evals))  # The names must be entries.
  evaluation.parse(config.evals, tuple(blocks["eval"].entries))
  objective.validate(config, num_devices)
  if blocks["model"].insert_block:
    models.blocks.check_block(blocks["model"].insert_block)
  return parsed


def resolve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Total number of training steps: `num_steps` if set, else epochs times steps per epoch."""
  if config.num_steps > 0:
    return int(config.num_steps)
  return max(1, int(round(config.num_epochs * steps_per_epoch)))


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serialisable copy of the config (tuples become lists)."""
  return config.to_dict()
