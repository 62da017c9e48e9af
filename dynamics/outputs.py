"""What a command writes at the end: a JSON report, its figure, one line.

Every command that reports (``python -m analysis.ntk``, ``analysis.jacobian``,
``analysis.hessian``, ``experiments.reproduce``, the benchmarks) writes its
report with `write_json` (atomically: a reader never sees half a file) and
says what it wrote with `wrote`; `write_report` does both, and draws the
figure, for the commonest case.
"""

import errno
import json
import os
import tempfile
from typing import Any, Callable, Optional, Sequence

from dynamics import provenance as provenance_lib


class OutputPathError(ValueError):
  """An output path that cannot be written; the message names it and the
  flag that moves it."""


def check_writable(out_dir: str, flag: str, default: bool = False) -> None:
  """Raises `OutputPathError` unless files can be made in ``out_dir`` (or,
  where it does not exist yet, in its nearest existing parent): checked
  before a command computes, so a result is never lost to its path.

  Args:
    out_dir: the directory a command will write into.
    flag: the flag that names it (``'--out'``), for the message.
    default: ``out_dir`` is the flag's default (e.g. next to a run): the
      message then says to pass the flag.
  """
  path = os.path.abspath(out_dir)
  way_out = f'; pass {flag}=DIR to write elsewhere' if default else ''
  name_max = 255
  for part in path.split(os.sep):
    if len(part.encode()) > name_max:
      raise OutputPathError(f'{flag}={out_dir}: a name in the path is longer '
                            f'than {name_max} bytes{way_out}')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise OutputPathError(f'{flag}={out_dir}: {existing} is a file, not a '
                          f'directory{way_out}')
  try:  # A real file: os.access says yes to root on a read-only mount.
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise OutputPathError(f'{flag}={out_dir}: cannot write in {existing} '
                          f'({e.strerror or e}){way_out}') from None


def describe_os_error(error: OSError) -> str:
  """One line for an ``OSError``: the path, what happened, and a full disk
  named as such.

  Example:
    >>> describe_os_error(OSError(errno.ENOSPC, 'No space left on device',
    ...                           '/runs/a/metrics.jsonl'))
    '/runs/a/metrics.jsonl: the disk is full (No space left on device)'
  """
  where = error.filename or 'a file'
  if error.filename2:
    where = f'{where} -> {error.filename2}'
  what = error.strerror or str(error)
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    what = f'the disk is full ({what})'
  return f'{where}: {what}'


def write_json(path: str, record: Any, *, indent: Optional[int] = 1,
               provenance: bool = False, **dump_kwargs: Any) -> bool:
  """Writes ``record`` to ``path`` as JSON, making its directory.

  The file is written beside and renamed into place, so it is whole or
  absent. ``dump_kwargs`` go to ``json.dump`` (``sort_keys``, ``default``).
  With ``provenance`` (every file under ``results/``), the dict ``record``
  gains a ``provenance`` item: `dynamics.provenance.provenance` (git commit
  and dirty flag, CPU model and cores, 1-minute load at start and end).

  Returns:
    Whether a file at ``path`` was replaced.
  """
  if provenance:
    record = {**record, 'provenance': provenance_lib.provenance()}
  replaced = os.path.exists(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=indent, **dump_kwargs)
  os.replace(path + '.tmp', path)
  return replaced


def wrote(paths: Sequence[str], replaced: bool = False) -> str:
  """The line a command prints after writing ``paths``.

  Example:
    >>> wrote(['out/ntk.json', 'out/ntk.png'], replaced=True)
    'wrote out/ntk.json and out/ntk.png (replacing the previous ones)'
    >>> wrote(['results/x.json'])
    'wrote results/x.json'
  """
  note = ''
  if replaced:
    note = (' (replacing the previous one)' if len(paths) == 1
            else ' (replacing the previous ones)')
  return f"wrote {' and '.join(paths)}{note}"


def write_report(out_dir: str, stem: str, report: Any,
                 plot: Optional[Callable[[Any, str], Any]] = None) -> str:
  """Writes ``out_dir/stem.json`` and, with ``plot``, ``out_dir/stem.png``
  (``plot(report, path)``, e.g. an `analysis.plots` function); returns the
  `wrote` line to print."""
  json_path = os.path.join(out_dir, stem + '.json')
  paths = [json_path]
  replaced = write_json(json_path, report)
  if plot is not None:
    paths.append(os.path.join(out_dir, stem + '.png'))
    plot(report, paths[-1])
  return wrote(paths, replaced)
