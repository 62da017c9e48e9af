"""What every command shares: absl flags, one-line user errors, exit codes.

A user error (a bad flag or config field, a missing run or checkpoint) prints
one line and exits 1; an interruption says where it stopped; only a bug prints
a traceback. Commands call `run(main)` instead of ``absl.app.run(main)``.
"""

import difflib
import re
import runpy
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Type

from absl import app
from absl import flags

EXIT_USER_ERROR = 1
EXIT_PREEMPTED = 75      # SIGTERM: checkpointed, resume me (EX_TEMPFAIL).
EXIT_INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT.


class UserError(Exception):
  """An error in what the user asked for; printed as one line, exit 1."""


def user_errors() -> Tuple[Type[BaseException], ...]:
  """Exception types that are the user's to fix, not bugs."""
  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint, config_lib, runs, sharding, workdir
  return (UserError, config_lib.ConfigError, runs.RunNotFoundError,
          runs.RunFileError, checkpoint.CheckpointMismatchError,
          sharding.DistributedEnvError, workdir.WorkdirError,
          workdir.WorkdirBusyError, workdir.ResumeMismatchError,
          FileExistsError, NotADirectoryError, PermissionError)


def _first_line(text: str) -> str:
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  return lines[0] if lines else ''


def _config_field(argv: Sequence[str], name: str) -> Optional[str]:
  """The ``config.a.b`` prefix of an override in ``argv`` up to part ``name``."""
  for arg in argv:
    m = re.match(r'--(config\.[\w.]+)', arg)
    if m and name in m.group(1).split('.')[1:]:
      parts = m.group(1).split('.')
      return '.'.join(parts[:parts.index(name, 1) + 1])
  return None


def _config_value(name: str, argv: Sequence[str]):
  """The config of flag ``--name``: parsed, or loaded from ``argv`` again."""
  value = flags.FLAGS[name].value if name in flags.FLAGS else None
  if value is not None:
    return value
  for arg in argv:
    if arg.startswith(f'--{name}='):
      path, _, variant = arg[len(name) + 3:].partition(':')
      get_config = runpy.run_path(path)['get_config']
      return get_config(variant) if variant else get_config()
  return None


def _siblings(field: str, argv: Sequence[str]) -> List[str]:
  """The fields declared next to ``config.a.b`` (those of ``config.a``)."""
  try:
    node = _config_value(field.split('.')[0], argv)
    for part in field.split('.')[1:-1]:
      node = node[part]
    return sorted(node.keys())
  except Exception:  # pylint: disable=broad-except
    return []


def _unknown_field(field: str, argv: Sequence[str]) -> str:
  siblings = _siblings(field, argv)
  close = difflib.get_close_matches(field.split('.')[-1], siblings, n=3)
  hint = (f'; did you mean {", ".join(close)}?' if close else
          f'; fields here: {", ".join(siblings)}' if siblings else '')
  return (f'Config error: {field}: unknown field (not declared in '
          f'dynamics/config_schema.py){hint}')


def describe_flag_error(error: BaseException, argv: Sequence[str]) -> str:
  """One line for a flag-parsing error, naming the flag or config field."""
  text = str(error).strip()
  if isinstance(error, KeyError) and len(error.args) == 1:
    text = str(error.args[0])
  m = re.search(r"Unknown command line flag '([^']+)'", text)
  if m:
    name = m.group(1)
    if name.startswith('config.'):
      return _unknown_field(name, argv)
    close = difflib.get_close_matches(name, list(flags.FLAGS), n=3)
    hint = f'; did you mean {", ".join("--" + c for c in close)}?' if close else ''
    return f'Flag error: --{name}: unknown flag{hint} (see --help)'
  if 'No such file' in text or 'Errno 2' in text:
    paths = re.findall(r"No such file or directory: '([^']+)'", text)
    return (f'Config error: --config={paths[0] if paths else "?"}: no such '
            'config file')
  m = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
  if m:
    field = _config_field(argv, m.group(2)) or m.group(2)
    return (f'Config error: {field}: unknown field (not declared in '
            f'dynamics/config_schema.py); did you mean {m.group(1)}?')
  if isinstance(error, (AttributeError, KeyError)):
    name = _first_line(text).strip("'\"")
    field = _config_field(argv, name)
    if field is not None:
      return _unknown_field(field, argv)
  if 'unknown variant' in text:
    line = [l for l in text.splitlines() if 'unknown variant' in l][-1]
    return 'Config error: ' + line.strip().split('Error: ')[-1]
  m = re.match(r'flag --(config\.[\w.]+)=(.*?): (.*)', _first_line(text))
  if m:
    return f'Config error: {m.group(1)}={m.group(2)!r}: {m.group(3)}'
  m = re.match(r'flag --([\w.]+)=(.*?): (.*)', _first_line(text))
  if m:
    return f'Flag error: --{m.group(1)}={m.group(2)}: {m.group(3)}'
  if isinstance(error, flags.IllegalFlagValueError) or 'required' in text:
    return f'Flag error: {_first_line(text)}'
  return f'Flag error: {type(error).__name__}: {_first_line(text)}'


def parse_flags(argv: List[str]) -> List[str]:
  """absl's parser; a bad flag or config field prints one line and exits 1."""
  try:
    argv = flags.FLAGS(argv)
    for flag in flags.FLAGS._flags().values():  # pylint: disable=protected-access
      # ml_collections loads config files lazily: load them now, so that a
      # bad file fails here, in one line, not at first use.
      if 'ConfigFlag' in type(flag).__name__ and flag.value is not None:
        flag.value.keys()
    return argv
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises AttributeError / KeyError / ValueError for a bad
    # config file or field, absl its own flags.Error.
    print(describe_flag_error(e, argv), file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[List[str]], Optional[int]],
        required: Sequence[str] = (), allow_args: int = 0) -> None:
  """``absl.app.run(main)`` with one-line user errors.

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
    from dynamics import config_lib  # pylint: disable=g-import-not-at-top
    try:
      return main(argv)
    except user_errors() as e:
      prefix = 'Config error' if isinstance(e, config_lib.ConfigError) else 'Error'
      print(f'{prefix}: {_first_line(e)}', file=sys.stderr)
      sys.exit(EXIT_USER_ERROR)

  app.run(checked_main, flags_parser=parse_flags)
