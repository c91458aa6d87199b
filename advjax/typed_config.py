"""Typed construction of frozen config dataclasses from ConfigDicts.

Attack and universal-adversary settings are frozen dataclasses (hashable, so
jit can take them as static arguments) built from the `attack` or
`eval.universal` blocks of an experiment config. `from_mapping` checks each
field's type against the dataclass default and reports the first bad field
as a one-line ConfigError.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

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


def from_mapping(cls: type[T], config: Mapping[str, Any], label: str) -> T:
  """Builds dataclass `cls` from a ConfigDict or dict with fields of the same names.

  Args:
    cls: a dataclass whose fields all have defaults.
    config: `ml_collections.ConfigDict` or mapping; missing fields keep their defaults.
    label: how errors name the config ('attack config', 'universal config').

  Returns:
    `cls(**fields)`, which runs the dataclass's own validation.

  Raises:
    ConfigError: an unknown field, or a field with a bad type or value.
  """
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
  kwargs = {}
  for name, value in values.items():
    field = fields[name]
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    try:
      kwargs[name] = _coerce(value, default)
    except (TypeError, ValueError, OverflowError):
      expected = "finite float or None" if default is None else (
          "finite float" if isinstance(default, float) else type(default).__name__)
      raise ConfigError(f"{label} field {name!r}: bad value {value!r} (expected {expected})") from None
  return cls(**kwargs)
