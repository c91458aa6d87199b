"""Typed config blocks: frozen dataclasses, their ConfigDict form, and the way back.

Every block of an experiment config is declared once, by the module that
owns it, as a frozen dataclass whose fields carry the defaults and whose
`__post_init__` validates them (`advjax.attacks.pgd.AttackConfig`,
`advjax.training.optim.OptimizerConfig`, an evaluator's `Args`, ...). A
block may hold another block (an evaluator's `attack`, an objective's
`attack`), and frozen dataclasses are hashable, so jit takes them as static
arguments.

  as_config_dict(block)   the block as a ConfigDict with every field present,
                          so each one can be overridden from the command line
                          (`--config.evals.pgd.attack.num_steps=100`)
  from_mapping(block, m)  a ConfigDict, dict or JSON object back to the
                          dataclass: missing fields keep the values of
                          `block` (a class, or an instance whose values are the
                          defaults, e.g. an evaluator's own PGD-40), nested
                          blocks merge the same way, types are checked against
                          the defaults, and the dataclass validates the result

Every mistake is one ConfigError naming the block and the field: an unknown
field, a field of the wrong type, a value the block refuses, and a field
that was renamed (a dataclass's `RENAMED = {'steps': 'num_steps'}` says
what the old name is now called). A block's own messages start with the
field (`'eps=300.0: must be ...'`), and `from_mapping` puts the block's
label in front (`'config.evals.pgd.attack.eps=300.0: must be ...'`).
"""

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections

from advjax.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, default: Any) -> Any:
  """`value` as the type of `default`; a None default means an optional float."""
  if default is None:
    if value is None:
      return None
    value = float(value)
    if not math.isfinite(value):
      raise ValueError
    return value
  if isinstance(default, tuple):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
      raise TypeError
    return tuple(value)
  if isinstance(default, dict):
    if hasattr(value, "to_dict"):
      return value.to_dict()
    if not isinstance(value, dict):
      raise TypeError
    return dict(value)
  if isinstance(default, bool):
    if not isinstance(value, bool):
      raise TypeError
    return value
  if isinstance(value, bool):
    raise TypeError
  if isinstance(default, int):
    if float(value) != int(value):
      raise TypeError
    return int(value)
  if isinstance(default, float):
    value = float(value)
    if not math.isfinite(value):
      raise ValueError
    return value
  if not isinstance(value, str):
    raise TypeError
  return value


def _is_block(value: Any) -> bool:
  return dataclasses.is_dataclass(value) and not isinstance(value, type)


def from_mapping(block: type[T] | T, config: Mapping[str, Any], label: str) -> T:
  """Builds a block from a ConfigDict or mapping with fields of the same names.

  Args:
    block: a frozen dataclass whose fields all have defaults, or an instance
      of one whose values stand in for the defaults.
    config: `ml_collections.ConfigDict` or mapping; missing fields keep the
      values of `block`, and a nested block's missing fields those of its
      value in `block`.
    label: how errors name the block ('config.evals.pgd', 'config.adversarial').

  Returns:
    The block with the given fields replaced, validated by its dataclass.

  Raises:
    ConfigError: naming `label` and the field: an unknown or renamed field, a
      field with a bad type, or a value the block refuses.
  """
  base = block if _is_block(block) else block()
  cls = type(base)
  if _is_block(config):
    config = dataclasses.asdict(config)
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  renamed = getattr(cls, "RENAMED", {})
  for name in values:
    if name in renamed:
      raise ConfigError(f"{label}: field {name!r} is now {renamed[name]!r}")
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
  kwargs = {}
  for name, value in values.items():
    default = getattr(base, name)
    if _is_block(default):
      if not (isinstance(value, Mapping) or hasattr(value, "to_dict") or _is_block(value)):
        raise ConfigError(f"{label}.{name}: expected a block of fields, got {value!r}")
      kwargs[name] = from_mapping(default, value, f"{label}.{name}")
      continue
    try:
      kwargs[name] = _coerce(value, default)
    except (TypeError, ValueError, OverflowError):
      expected = "finite float or None" if default is None else (
          "finite float" if isinstance(default, float) else type(default).__name__)
      raise ConfigError(f"{label}.{name}: bad value {value!r} (expected {expected})") from None
  try:
    return dataclasses.replace(base, **kwargs)
  except ConfigError as e:
    raise ConfigError(_prefixed(label, str(e), fields)) from None


def _prefixed(label: str, message: str, fields: set[str]) -> str:
  """A block's own error under its label: 'eps=300: ...' -> 'config.evals.pgd.attack.eps=300: ...'."""
  match = re.match(r"(\w+)[:=]", message)
  if match and match.group(1) in fields:
    return f"{label}.{message}"
  return f"{label}: {message}"


def to_dict(block: Any) -> dict[str, Any]:
  """The block's fields as plain (nested) dicts."""
  return dataclasses.asdict(block)


def merge(defaults: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
  """`defaults` with `updates` applied, nested mappings merged field by field (not replaced)."""
  out = dict(defaults)
  for key, value in updates.items():
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    if _is_block(value):
      value = dataclasses.asdict(value)
    if isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
      out[key] = merge(out[key], value)
    else:
      out[key] = value
  return out


def as_config_dict(block: Any) -> ml_collections.ConfigDict:
  """A block (or a dict of fields) as a ConfigDict holding every field.

  Every field can then be overridden from the command line; nested blocks
  become nested ConfigDicts, and a None default a float placeholder so that
  it still has a type.
  """
  values = dataclasses.asdict(block) if _is_block(block) else dict(block)

  def convert(value):
    if isinstance(value, Mapping):
      return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
    return ml_collections.config_dict.placeholder(float) if value is None else value

  return convert(values)
