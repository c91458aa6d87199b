"""Config validation: every mistake is one ConfigError naming the field."""

import importlib
import os

import pytest

from advjax import config as config_lib
from advjax.errors import ConfigError
from configs import default, tiny


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py")))
def test_every_shipped_config_validates(name):
  """Experiment configs validate; sweep configs (with `erm` and `experiment`) validate both."""
  config = importlib.import_module(f"configs.{name}").get_config()
  for experiment in (config.erm, config.experiment) if "experiment" in config else (config,):
    config_lib.validate(experiment, num_devices=1)


def test_default_and_tiny_validate_on_eight_devices():
  for module in (default, tiny):
    config_lib.validate(module.get_config(), num_devices=8)


@pytest.mark.parametrize("field,value,expected", [
    ("objective", "nope", "config.objective"),
    ("batch_size", 30, "not divisible by the 8 devices"),
    ("optimizer.name", "lbfgs", "config.optimizer.name"),
    ("schedule.name", "linear", "config.schedule.name"),
    ("schedule.boundaries", (5.0, 2.0), "config.schedule.boundaries"),
    ("adv_weight", 1.5, "config.adv_weight"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("attack_bn_mode", "train", "config.attack_bn_mode"),
    ("attack.norm", "l3", "config.attack"),
    ("evals.pgd.eps", (0.0, 300.0), "pgd evaluator: eps values"),
    ("sharedness", 3, "config.sharedness: s=3 must divide the per-device batch 4"),
    ("evals.eps_uni.rate", 2.0, "eps_uni evaluator: rate"),
    ("evals.pgd.stepz", 3, "config.evals.pgd: unknown field"),
    ("train_evals", ("clean", "robust"), "no evaluation entry named robust"),
    ("uat.delta_rule", "rmsprop", "config.uat.delta_rule"),
    ("advprop.eval_bn", "aux", "config.advprop.eval_bn"),
    ("model.freeze_backbone", True, "config.model.freeze_backbone"),
])
def test_bad_values_name_the_field(field, value, expected):
  config = tiny.get_config()
  config.objective = field.split(".")[0] if field.split(".")[0] in ("uat", "advprop") else "pgd_at"
  if config.objective == "uat":
    config.objective = "uat_alternating"
  config.evals.pgd = config_lib.eval_entry("pgd", eps=(8.0,))
  config.evals.eps_uni = config_lib.eval_entry("eps_uni")
  parent, _, leaf = field.rpartition(".")
  target = config if not parent else config[parent]
  target[leaf] = value
  with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
    config_lib.validate(config, num_devices=8)


def test_unknown_field_in_an_experiment_file_is_named():
  config = tiny.get_config()
  config.optimizer.learning_rte = 0.1  # A typo in an experiment file.
  with pytest.raises(ConfigError, match=r"config\.optimizer\.learning_rte: no such field"):
    config_lib.validate(config)


def test_resolve_steps_prefers_num_steps():
  config = tiny.get_config()
  assert config_lib.resolve_steps(config, steps_per_epoch=100) == 12
  config.num_steps = 0
  config.num_epochs = 2.5
  assert config_lib.resolve_steps(config, steps_per_epoch=100) == 250
