"""Errors raised for bad user input.

Everything a user can get wrong from the command line (config fields, names,
paths, data, checkpoints) raises a subclass of `AdvjaxError`. The scripts catch
it, print its one-line message and exit with status 2, so a mistake never
surfaces as a traceback from inside XLA and never touches an existing run.
"""


class AdvjaxError(Exception):
  """Base class of user-facing errors; the message is one line naming the problem."""


class ConfigError(AdvjaxError, ValueError):
  """A config field is missing, unknown, or has an invalid value."""


class DataError(AdvjaxError):
  """A dataset is missing, unreadable or malformed."""


class CheckpointError(AdvjaxError):
  """A checkpoint or run directory cannot be used."""


def unknown_name(kind: str, name: str, known) -> ConfigError:
  """Builds the error for a registry lookup of a name that does not exist."""
  return ConfigError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


class NonFiniteError(AdvjaxError):
  """Training produced a non-finite loss, gradient or parameter; nothing from that step was saved."""
