"""Names that configs use, and what they resolve to: one small registry type for all of advjax.

Configs hold strings (`config.objective = 'pgd_at'`, `config.model.norm =
'batchnorm:0.99'`), and each string resolves through the registry of the
module that owns the concept: objectives, evaluators, models, heads, blocks,
activations, normalisations, datasets and attack losses. A `Registry` is a
dict with a kind ('objective', 'evaluator', ...) so that every lookup of a
name that is not there is the same one-line `ConfigError`, listing the known
names:

    OBJECTIVES = Registry("objective")
    OBJECTIVES.register("erm", ERM)
    OBJECTIVES["ermm"]   # ConfigError: unknown objective 'ermm'; known: erm

Parameterised names. A name may carry arguments after a colon, written as
comma-separated strings ('elu:0.5', 'aux_batchnorm:adv,0.99',
'denoise:nonlocal_gaussian,no_conv'), so that a config string can hold them.
`build(spec, **kwargs)` looks up the part before the colon and calls the
registered factory with the arguments first and `kwargs` after; a factory
that refuses its arguments (TypeError, ValueError) is one ConfigError naming
the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from advjax.errors import ConfigError, unknown_name


def parse_name(name: str) -> tuple[str, tuple[str, ...]]:
  """Splits a registry name with arguments, 'base:arg1,arg2', into its parts.

  Args:
    name: 'base' or 'base:args'.

  Returns:
    (base, args), args a tuple of stripped strings (empty without a colon).
  """
  base, _, rest = name.partition(":")
  return base, tuple(a.strip() for a in rest.split(",")) if rest else ()


class Registry(dict):
  """A dict of registered names whose missing keys are one `ConfigError` naming the known ones.

  Attributes:
    kind: what the names name ('objective', 'dataset', ...), used in errors.
  """

  def __init__(self, kind: str, entries: Iterable[tuple[str, Any]] | dict[str, Any] = ()):
    super().__init__(entries)
    self.kind = kind

  def __missing__(self, name: str) -> Any:
    raise unknown_name(self.kind, name, self)

  def register(self, name: str, value: Any) -> Any:
    """Adds (or replaces) `name`; returns `value`, so it also works as a decorator's body."""
    self[name] = value
    return value

  def check(self, spec: str, /) -> None:
    """Raises ConfigError unless the part of `spec` before a colon is registered."""
    base, _ = parse_name(spec)
    if base not in self:
      raise unknown_name(self.kind, spec, self)

  def build(self, spec: str, /, **kwargs) -> Any:
    """Calls the factory registered under `spec`'s name with its arguments, then `kwargs`.

    Args:
      spec: 'name' or 'name:arg1,arg2'.
      **kwargs: keyword arguments every factory of this registry takes.

    Raises:
      ConfigError: an unknown name, or arguments its factory refuses.
    """
    self.check(spec)
    base, args = parse_name(spec)
    factory: Callable[..., Any] = self[base]
    try:
      return factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{self.kind} {spec!r}: bad arguments {args} ({e})") from None
