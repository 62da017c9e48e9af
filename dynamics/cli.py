"""What every command shares: absl flags, one-line user errors, exit codes.

A user error (a bad flag or config field, a missing run or checkpoint) prints
one line and exits 1; an interruption says where it stopped; only a bug prints
a traceback. Commands call `run(main)` instead of ``absl.app.run(main)``.
"""

import ast
import difflib
import os
import runpy
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import ml_collections
from absl import app
from absl import flags
from ml_collections.config_flags import config_flags

from dynamics import config_schema  # JAX-free, as this module.
from dynamics import config_migrate  # JAX-free too.
from dynamics import errors
from dynamics import interrupts  # JAX-free, as this module.

EXIT_USER_ERROR = 1
EXIT_PREEMPTED = interrupts.EXIT_PREEMPTED      # SIGTERM: resume me.
EXIT_INTERRUPTED = interrupts.EXIT_INTERRUPTED  # Ctrl-C, as shells report it.


class UserError(Exception):
  """An error in what the user asked for; printed as one line, exit 1."""


def user_errors() -> Tuple[Type[BaseException], ...]:
  """Exception types that are the user's to fix, not bugs."""
  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint, data, outputs, runs, sharding, workdir
  return (UserError, errors.ConfigError, runs.RunNotFoundError,
          runs.RunFileError, checkpoint.CheckpointMismatchError,
          checkpoint.CheckpointSaveError, data.TokenDataError,
          outputs.OutputPathError,
          sharding.DistributedEnvError, workdir.WorkdirError,
          workdir.WorkdirBusyError, workdir.ResumeMismatchError,
          FileExistsError, NotADirectoryError, PermissionError)


def _first_line(text: Any) -> str:
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  return lines[0] if lines else ''


def _config_flags() -> List[Any]:
  """The ml_collections config flags of this command (``--config``, ...)."""
  # pylint: disable=protected-access
  return [f for f in flags.FLAGS._flags().values()
          if isinstance(f, config_flags._ConfigFlag)]


def _overrides(argv: Sequence[str], name: str) -> List[Tuple[str, str]]:
  """``(field, raw value)`` of each ``--<name>.FIELD=VALUE`` in ``argv``."""
  prefix = f'--{name}.'
  return [tuple(a[len(prefix):].partition('=')[::2]) for a in argv
          if a.startswith(prefix)]


def _config_argument(argv: Sequence[str], name: str) -> Optional[str]:
  """The raw ``--<name>=PATH[:ARG]`` value in ``argv``."""
  values = [a[len(name) + 3:] for a in argv if a.startswith(f'--{name}=')]
  return values[-1] if values else None


def _load_config(name: str, argv: Sequence[str]) -> Any:
  """The config of flag ``--name``: parsed, or loaded from ``argv`` again
  (without the overrides)."""
  value = flags.FLAGS[name].value if name in flags.FLAGS else None
  if value is not None:
    return value
  path, _, variant = (_config_argument(argv, name) or '').partition(':')
  return config_from_file(path, variant or None)


def config_from_file(path: str, variant: Optional[str] = None) -> Any:
  """``get_config(variant)`` of the config file at ``path`` (``get_config()``
  when ``variant`` is None), for commands that take a path, not a config
  flag."""
  get_config = runpy.run_path(path)['get_config']
  return get_config(variant) if variant else get_config()


def _declared(config: Any, field: str) -> Tuple[bool, List[str]]:
  """Whether ``field`` ('a.b.c') is declared in ``config``; else the fields
  declared where it departs."""
  node = config
  for part in field.split('.'):
    if not hasattr(node, 'keys'):
      return True, []  # Below a leaf: a value, not a field, is wrong.
    if part not in node:
      return False, sorted(node.keys())
    node = node[part]
  return True, []


def _unknown_field(name: str, argv: Sequence[str]) -> Optional[str]:
  """One line for the first ``--<name>.FIELD`` not declared, or None."""
  try:
    config = _load_config(name, argv)
  except Exception:  # pylint: disable=broad-except
    return None
  for field, _ in _overrides(argv, name):
    declared, siblings = _declared(config, field)
    if not declared:
      close = difflib.get_close_matches(field.split('.')[-1], siblings, n=3)
      hint = (f'; did you mean {", ".join(close)}?' if close else
              f'; fields here: {", ".join(siblings)}')
      return (f'Config error: {name}.{field}: unknown field (not declared in '
              f'dynamics/config_schema.py){hint}')
  return None


def _bad_value(argv: Sequence[str]) -> Optional[str]:
  """One line for the first ``--NAME=VALUE`` whose flag's parser refuses
  VALUE, with the parser's own reason."""
  config_names = {f.name for f in _config_flags()}
  for arg in argv:
    name, sep, raw = arg[2:].partition('=')
    if (not arg.startswith('--') or not sep or name in config_names
        or name not in flags.FLAGS):
      continue
    try:
      flags.FLAGS[name].parser.parse(raw)
    except Exception as e:  # pylint: disable=broad-except
      if name.split('.')[0] in config_names:
        return f'Config error: {name}={raw!r}: {_first_line(e)}'
      return f'Flag error: --{name}={raw}: {_first_line(e)}'
  return None


def _chain(error: BaseException):
  """``error``, then what it was raised from or while handling, in turn."""
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _config_file_error(name: str, argv: Sequence[str],
                       error: BaseException) -> Optional[str]:
  """One line for an exception raised while ``--<name>=FILE`` loads (the
  file's line that raised it, and what), or None when it did not come out
  of that file."""
  argument = _config_argument(argv, name)
  if argument is None:
    return None
  path = argument.partition(':')[0]
  if not os.path.isfile(path):
    return f'Config error: --{name}={path}: no such config file'
  for raised in _chain(error):
    frames = [f for f in traceback.extract_tb(raised.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    if not frames:
      continue
    if isinstance(raised, errors.ConfigError):  # The file's own message.
      return f'Config error: --{name}={argument}: {_first_line(raised)}'
    where = f'{path}:{frames[-1].lineno} ({frames[-1].line})'
    if isinstance(raised, (KeyError, AttributeError)):
      return (f'Config error: {where}: sets or reads a field not declared in '
              'dynamics/config_schema.py')
    return (f'Config error: {where}: {type(raised).__name__}: '
            f'{_first_line(raised)}')
  return None


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a flag-parsing error, naming the flag or config field.

  The line comes from the exception's type and from ``argv`` (which override
  names no declared field, which value its parser refuses, which line of the
  config file raised), never from the wording of absl's or ml_collections'
  messages.
  """
  if isinstance(error, errors.ConfigError):
    return f'Config error: {_first_line(error)}'
  if isinstance(error, flags.UnrecognizedFlagError):
    if error.flagname.startswith(tuple(f'{f.name}.' for f in _config_flags())):
      return (f'Config error: {error.flagname}: unknown field (not declared '
              'in dynamics/config_schema.py)')
    close = difflib.get_close_matches(error.flagname, list(flags.FLAGS), n=3)
    hint = f'; did you mean {", ".join("--" + c for c in close)}?' if close else ''
    return f'Flag error: --{error.flagname}: unknown flag{hint} (see --help)'
  if isinstance(error, config_flags.FlagOrderError):
    return f'Flag error: {_first_line(error)}'
  for flag in _config_flags():
    line = _unknown_field(flag.name, argv)
    if line:
      return line
  line = isinstance(error, flags.IllegalFlagValueError) and _bad_value(argv)
  if line:
    return line
  for flag in _config_flags():
    line = _config_file_error(flag.name, argv, error)
    if line:
      return line
  if isinstance(error, flags.Error):
    return f'Flag error: {_first_line(error)}'
  return f'Flag error: {type(error).__name__}: {_first_line(error)}'


def _deprecated_flat(argv: List[str]
                     ) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
  """``argv`` without the deprecated ``--<config>.optimizer.FIELD=NUMBER``
  whose FIELD is a section's name now (``optimizer.momentum``), and those
  values per config flag, for `config_migrate.resolve_deprecated`."""
  colliding = set(config_migrate.deprecated_flat_fields()) & set(
      config_migrate.optimizer_sections(config_schema.defaults().optimizer))
  kept, given = [], {}
  names = [f.name for f in _config_flags()]
  for arg in argv:
    for name in names:
      field, _, raw = arg[len(f'--{name}.optimizer.'):].partition('=')
      if arg.startswith(f'--{name}.optimizer.') and field in colliding:
        try:
          value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
          value = raw
        if not isinstance(value, dict):
          given.setdefault(name, {})[field] = value
          break
    else:
      kept.append(arg)
  return kept, given


def parse_flags(argv: List[str]) -> List[str]:
  """absl's parser; a bad flag or config field prints one line and exits 1.

  Deprecated flat optimizer fields (``--config.optimizer.b2=0.99``) are
  moved into the selected optimizer's section here, one warning line each
  (`dynamics.config_migrate.resolve_deprecated`), so every command sees the
  resolved config.
  """
  try:
    parsed, given = _deprecated_flat(list(argv))
    parsed = flags.FLAGS(parsed)
    for flag in _config_flags():
      # ml_collections loads config files lazily: load them now, so that a
      # bad file fails here, in one line, not at first use.
      if flag.value is None:
        continue
      flag.value.keys()  # A file that failed to load raises here.
      if not isinstance(flag.value, ml_collections.ConfigDict):
        raise errors.ConfigError(
            f'--{flag.name}={_config_argument(argv, flag.name)}: get_config() '
            f'returned a {type(flag.value).__name__}, not the ConfigDict of '
            'configs/base.py:get_config()')
      for notice in config_migrate.resolve_deprecated(
          flag.value, given.get(flag.name)):
        print(f'Warning: {notice}', file=sys.stderr)
    return parsed
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises AttributeError / KeyError / ValueError for a bad
    # config file or field, absl its own flags.Error.
    print(describe_flag_error(e, argv), file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[List[str]], Optional[int]],
        required: Sequence[str] = (), allow_args: int = 0) -> None:
  """``absl.app.run(main)`` with one-line user errors, SIGTERM exiting 75
  and Ctrl-C 130 at any moment (`dynamics.interrupts`).

  Args:
    main: the command's ``main(argv)``.
    required: flags that must be given (checked with one-line errors).
    allow_args: positional arguments the command takes (more are an error).
  """
  def checked_main(argv):
    missing = [name for name in required if flags.FLAGS[name].value is None]
    if missing:
      print(f'Flag error: --{missing[0]} is required (see --help)',
            file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    if len(argv) > 1 + allow_args:
      print(f'Flag error: unexpected arguments {argv[1 + allow_args:]} (flags are '
            '--name=value; see --help)', file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    interrupts.raise_keyboard_interrupt()  # Caught below, or by main.
    try:
      result = main(argv)
    except KeyboardInterrupt:  # The command did not say where it stopped.
      interrupts.exit_now(EXIT_INTERRUPTED, '\nInterrupted (Ctrl-C).')
    except user_errors() as e:
      prefix = 'Config error' if isinstance(e, errors.ConfigError) else 'Error'
      print(f'{prefix}: {_first_line(e)}', file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    except OSError as e:  # A path the user gave or a full disk: not a bug.
      from dynamics import outputs  # pylint: disable=g-import-not-at-top
      print(f'Error: {outputs.describe_os_error(e)}', file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)
    if interrupts.interrupted:  # A Ctrl-C that something swallowed.
      interrupts.exit_now(EXIT_INTERRUPTED, '\nInterrupted (Ctrl-C).')
    return result

  if not interrupts.installed():
    interrupts.install()  # Commands that did not from their first line.
  app.run(checked_main, flags_parser=parse_flags)
