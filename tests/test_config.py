"""Config validation: every mistake is one ConfigError naming the field."""

import importlib
import os

import pytest

from advjax import config as config_lib
from advjax import sweep
from advjax.errors import ConfigError
from configs import default, tiny


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# Config files that need an argument, and one they take.
SAMPLE_ARGS = {"seeds": "tiny"}


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py")))
def test_every_shipped_config_validates(name):
  """Experiment configs validate; so does every run of a sweep config (with its seeds and references)."""
  config = importlib.import_module(f"configs.{name}").get_config(SAMPLE_ARGS.get(name))
  if "runs" in config:
    assert sweep.run_configs(config, "runs/sweep", num_devices=1)
  else:
    config_lib.validate(config, num_devices=1)


def test_default_and_tiny_validate_on_eight_devices():
  for module in (default, tiny):
    config_lib.validate(module.get_config(), num_devices=8)


@pytest.mark.parametrize("field,value,expected", [
    ("objective", "nope", "config.objective"),
    ("batch_size", 30, "not divisible by the 8 devices"),
    ("optimizer.name", "lbfgs", "config.optimizer.name"),
    ("schedule.name", "linear", "config.schedule.name"),
    ("schedule.boundaries", (5.0, 2.0), "config.schedule.boundaries"),
    ("adversarial.weight", 1.5, "config.adversarial.weight"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("adversarial.bn_mode", "train", "config.adversarial.bn_mode"),
    ("adversarial.attack.norm", "l3", "config.adversarial.attack.norm"),
    ("evals.pgd.eps", (0.0, 300.0), "pgd evaluator: eps values"),
    ("adversarial.heap_size", 3, "config.adversarial.heap_size: s=3 must divide the per-device batch 4"),
    ("evals.eps_uni.rate", 2.0, "eps_uni evaluator: rate"),
    ("evals.pgd.stepz", 3, "config.evals.pgd: unknown field"),
    ("train_evals", ("clean", "robust"), "no evaluation entry named robust"),
    ("eval.entries", ("clean", "pgd10"), "no evaluation entry named pgd10"),
    ("uat.step_rule", "rmsprop2", "config.uat: unknown ascent rule"),
    ("uat.step_rule", "fgsm", "ascent rule 'fgsm' is now called 'sign'"),
    ("advprop.eval_bn", "aux", "config.advprop.eval_bn"),
    ("model.freeze_backbone", True, "config.model: freeze_backbone"),
])
def test_bad_values_name_the_field(field, value, expected):
  config = tiny.get_config()
  config.objective = "shared_at"
  config.evals.pgd = config_lib.eval_entry("pgd", eps=(8.0,))
  config.evals.eps_uni = config_lib.eval_entry("eps_uni")
  parent, _, leaf = field.rpartition(".")
  target = config if not parent else config[parent] if "." not in parent else config[parent.split(".")[0]][
      parent.split(".")[1]]
  target[leaf] = value
  with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
    config_lib.validate(config, num_devices=8)


@pytest.mark.parametrize("field,value", [
    ("num_epochs", float("inf")), ("num_epochs", float("nan")), ("seed", -1), ("seed", 2**40),
    ("optimizer.momentum", 4.8e13), ("optimizer.b2", -0.5), ("optimizer.b1", 1.0),
    ("optimizer.learning_rate", float("inf")), ("optimizer.eps", 0.0), ("data.image_size", 10**9),
    ("batch_size", 0), ("keep_checkpoints", 0), ("schedule.boundaries", (float("inf"),)),
    ("nonfinite", "ignore"), ("loss.label_smoothing", 1.0),
])
def test_out_of_range_values_are_refused(field, value):
  config = tiny.get_config()
  parent, _, leaf = field.rpartition(".")
  (config if not parent else config[parent])[leaf] = value
  with pytest.raises(ConfigError, match=f"config.{field}".replace(".", r"\.")):
    config_lib.validate(config)


@pytest.mark.parametrize("field,value,expected", [
    ("adversarial.attack.eps", 1e7, "eps"), ("adversarial.attack.step_size", float("inf"), "step_size"),
    ("adversarial.attack.momentum", float("nan"), "momentum"), ("uat.eps", 1e7, "uat.eps"),
])
def test_attack_sizes_are_bounded(field, value, expected):
  config = tiny.get_config()
  block, _, leaf = field.rpartition(".")
  node = config
  for key in block.split("."):
    node = node[key]
  node[leaf] = value
  with pytest.raises(ConfigError, match=expected):
    config_lib.validate(config)


def test_every_block_is_checked_whatever_the_objective():
  """A block the objective does not read is still validated (an ERM run with a bad attack is refused)."""
  for field, value in (("eps", -8.0), ("init", "bogus"), ("loss", "")):
    config = tiny.get_config()
    assert config.objective == "erm"
    config.adversarial.attack[field] = value
    with pytest.raises(ConfigError, match=f"config.adversarial.attack.{field}"):
      config_lib.validate(config)


def test_renamed_fields_say_where_they_went():
  config = tiny.get_config()
  config.sharedness = 8  # An experiment file written for the old layout.
  with pytest.raises(ConfigError, match=r"config\.sharedness is now config\.adversarial\.heap_size"):
    config_lib.validate(config)
  with pytest.raises(ConfigError, match=r"'steps' is now 'attack\.num_steps'"):
    config_lib.eval_entry("pgd", eps=(8.0,), steps=10)


def test_a_partial_nested_block_merges_into_its_default():
  """eval_entry(..., universal=dict(num_steps=40)) changes that field only, as the command line does."""
  entry = config_lib.eval_entry("eps_uni", universal=dict(num_steps=40))
  assert entry.universal.num_steps == 40
  assert entry.universal.step_schedule == "annealed" and entry.universal.beta == 4.0  # The rest: the default.
  config = tiny.get_config()
  config.evals.eps_uni = config_lib.eval_entry("eps_uni")
  config.evals.eps_uni.universal.num_steps = 40  # --config.evals.eps_uni.universal.num_steps=40
  assert config.evals.eps_uni.to_dict() == entry.to_dict()


def test_evaluator_arguments_are_typed():
  config = tiny.get_config()
  with pytest.raises(ConfigError, match="pgd"):
    config.evals.pgd = config_lib.eval_entry("pgd", eps=("eight",))
  with pytest.raises(ConfigError, match=r"eval_entry\('pgd'\)\.attack\.num_steps"):
    config_lib.eval_entry("pgd", eps=(8.0,), attack=dict(num_steps=float("inf")))
  config.evals.pgd = config_lib.eval_entry("pgd", eps=(8.0,))
  config.evals.pgd.attack.num_steps = -3
  with pytest.raises(ConfigError, match=r"config\.evals\.pgd\.attack\.num_steps"):
    config_lib.validate(config)


@pytest.mark.parametrize("text,expected", [
    (None, "does not exist"),
    ("def get_config(:\n  pass\n", "syntax error at line 1"),
    ("import ml_collections\n", "defines no get_config()"),
])
def test_config_file_problems_say_exactly_that(tmp_path, capsys, text, expected):
  from advjax import cli
  path = tmp_path / "exp.py"
  if text is not None:
    path.write_text(text)
  with pytest.raises(SystemExit) as exit_:
    cli.check_config_file(str(path))
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: config file") and expected in err[0]


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
