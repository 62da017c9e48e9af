"""Where and under what load a results file was made.

Every results file (``results/*.json``: the reproductions through
``experiments.reproductions.common``, the benchmarks through
`dynamics.outputs.write_json` callers) records `provenance()`: the git commit
of the code and whether the tree had uncommitted changes, the CPU model and
core count, and the 1-minute load average when the command started (this
module's import, or `mark_start`) and when it wrote. A load above the core
count means other jobs shared the machine: wall times and speed ratios taken
then are *loaded*, and `loaded` says so.
"""

import os
import platform
import subprocess
from typing import Any, Dict, Mapping, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_1min() -> Optional[float]:
  """The 1-minute load average (None where the OS has none)."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


_START_LOAD = load_1min()


def mark_start() -> None:
  """Takes the start load average now (a command calls this as it starts)."""
  global _START_LOAD
  _START_LOAD = load_1min()


# What commands write into the checkout: not code, so not "dirty".
OUTPUT_DIRS = ('results', 'docs/figures')


def git_commit(root: str = _ROOT) -> Dict[str, Any]:
  """``{'commit': sha or None, 'dirty': bool or None}`` of the checkout at
  ``root`` (``dirty``: tracked files outside `OUTPUT_DIRS` differ from the
  commit: a results file or figure an earlier command wrote into the same
  checkout does not make the code that ran differ from the commit)."""
  def git(*args):
    return subprocess.run(['git', '-C', root, *args], capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()
  try:
    commit = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no', '--',
                     '.', *(f':(exclude){d}' for d in OUTPUT_DIRS)))
  except (OSError, subprocess.SubprocessError):
    return {'commit': None, 'dirty': None}
  return {'commit': commit, 'dirty': dirty}


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo``; else `platform.processor`)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def provenance() -> Dict[str, Any]:
  """The record a results file carries (see the module docstring).

  Returns:
    ``{'git_commit', 'git_dirty', 'cpu_model', 'cpu_count',
    'load_1min_start', 'load_1min_end'}``.
  """
  git = git_commit()
  return {'git_commit': git['commit'], 'git_dirty': git['dirty'],
          'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(),
          'load_1min_start': _START_LOAD, 'load_1min_end': load_1min()}


def loaded(record: Mapping[str, Any]) -> bool:
  """Whether a `provenance` record was taken with more runnable jobs than
  cores at its start or end (its timings then are noisy and high).

  Example:
    >>> loaded({'cpu_count': 2, 'load_1min_start': 0.4, 'load_1min_end': 3.1})
    True
    >>> loaded({'cpu_count': 2, 'load_1min_start': 0.4, 'load_1min_end': 1.0})
    False
  """
  loads = [record.get('load_1min_start'), record.get('load_1min_end')]
  return any(l is not None and l > record['cpu_count'] for l in loads)
