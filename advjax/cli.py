"""What train.py and eval.py share: flags, config loading and error reporting.

Both scripts take `--config configs/<name>.py[:arg]`, `--config.<field>=<value>`
overrides and `--workdir DIR`. Any mistake in them (a missing config file, a
field that does not exist, a value of the wrong type, a bad name, an
unwritable workdir, missing data) ends the program with one line on stderr
naming the problem and exit status 2, before anything is written.
"""

import ast
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from advjax.errors import AdvjaxError

EXIT_USAGE = 2

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory for checkpoints, metrics and results.")


def fail(message: str) -> None:
  """Prints one line naming the problem and exits with status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _config_path(argv: list[str]) -> str | None:
  """The file part of the `--config` argument ('configs/x.py' of 'configs/x.py:arg'), if any."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      return value.split(":", 1)[0]
  return None


def check_config_file(path: str) -> None:
  """One clear line for a config file that is missing, does not parse, or has no get_config()."""
  if not os.path.isfile(path):
    fail(f"config file {path!r} does not exist")
  try:
    with open(path) as f:
      tree = ast.parse(f.read(), filename=path)
  except SyntaxError as e:
    fail(f"config file {path!r} has a syntax error at line {e.lineno}: {e.msg}")
  except (OSError, UnicodeDecodeError) as e:
    fail(f"config file {path!r} cannot be read: {e}")
  if not any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in tree.body):
    fail(f"config file {path!r} defines no get_config() function")


def _parse_flags(argv: list[str]) -> list[str]:
  path = _config_path(argv)
  if path is not None:
    check_config_file(path)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    fail(unknown_override(argv, e))
  except Exception as e:  # config_flags raises plain errors for unloadable files/values.
    fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def unknown_override(argv: list[str], error: Exception) -> str:
  """One line for a `--config.<path>=` override whose field does not exist: the path, and what it may mean.

  ml_collections raises a KeyError whose text is the missing key and, for a
  near miss, a 'Did you mean' line; this names the whole dotted path instead,
  the suggestion, and where a field of an earlier version moved.
  """
  from advjax import config as config_lib  # pylint: disable=g-import-not-at-top  (flags parse before heavy imports)

  text = str(error.args[0] if error.args else error).replace("\\n", "\n").replace("\\'", "'").strip("'\"")
  key = text.splitlines()[0].strip("'\"")
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  paths = [arg.split("=", 1)[0][len("--config."):] for arg in argv if arg.startswith("--config.")]
  path = next((p for p in paths if key in p.split(".")), key)
  message = f"--config.{path}: no such field"
  if path in config_lib.RENAMED:
    return f"{message}; config.{path} is now config.{config_lib.RENAMED[path]}"
  if suggestion:
    return f"{message} (did you mean {suggestion.group(1)!r}?)"
  return message


def _not_orbax(record) -> bool:
  """A log filter: orbax's records are dropped (every failure of a save reaches the user as one CheckpointError)."""
  return f"{os.sep}orbax{os.sep}" not in (record.pathname or "")


def _orbax_leftover(unraisable) -> bool:
  """Whether an exception Python could not raise is orbax's: a coroutine of a failed read outliving its loop."""
  code = getattr(unraisable.object, "cr_code", None)
  return ((code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)
          or (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)))


def quiet_library_logs() -> None:
  """Logs of the scripts: errors only, and nothing from orbax.

  orbax logs every save at INFO, harmless notes at WARNING, and a failed
  background save (a full disk) as tracebacks of its writer threads at
  ERROR, dozens of lines before advjax's own one-line error for it; and a
  read of a damaged checkpoint leaves coroutines whose 'Event loop is
  closed' Python prints as it collects them. advjax reports every one of
  these failures itself, in one line.
  """
  logging.set_verbosity(logging.ERROR)
  handler = logging.get_absl_handler()
  if _not_orbax not in handler.filters:
    handler.addFilter(_not_orbax)
  previous = sys.unraisablehook
  if getattr(previous, "__name__", "") != "_quiet_unraisable":

    def _quiet_unraisable(unraisable):
      if not _orbax_leftover(unraisable):
        previous(unraisable)

    sys.unraisablehook = _quiet_unraisable


def ignore_sigterm_from_now_on() -> None:
  """The work is done (or reported): a SIGTERM during interpreter shutdown must not turn exit 0 into -15.

  CPython sets a Python-level signal handler back to the default action while
  it finalises, which takes a while after JAX and orbax; ignoring the signal
  instead keeps the exit status the script chose.
  """
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run(main: Callable[[object, str], None]) -> None:
  """Parses flags, loads the config and calls `main(config, workdir)`, mapping input errors to exit 2."""

  def _main(argv):
    quiet_library_logs()
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["config"].present:
      fail("--config is required (e.g. --config configs/default.py)")
    if not _WORKDIR.value:
      fail("--workdir is required")
    try:
      config = _CONFIG.value
      config.keys()  # An unloadable config file only raises when first used.
    except Exception as e:
      fail(f"cannot load config {flags.FLAGS['config'].config_filename!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    try:
      main(config, os.path.abspath(_WORKDIR.value))
    except AdvjaxError as e:
      fail(str(e))
    finally:
      # orbax's background threads must not print after the error line.
      logging.set_verbosity(logging.FATAL)
      ignore_sigterm_from_now_on()

  app.run(_main, flags_parser=_parse_flags)
