"""What every reproduction shares: the results file, seeds and noise, machine.

A results file ``results/NAME.json`` holds::

  {"name", "size", "seeds", "command", "date", "wall_seconds",
   "versions": {python, jax, jaxlib, flax, optax, orbax, numpy, dynamics},
   "machine": {platform, processor, cpu_count, devices},
   "configs": {label: the config record of each kind of run},
   "numbers": {...every number the README or a notebook quotes...}}

Comparisons between methods use `compare` (mean, std and "within noise"
unless the means differ by more than two standard errors).
"""

import datetime
import importlib
import json
import math
import os
import platform
import sys
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(ROOT, 'results')
FIGURES_DIR = os.path.join(ROOT, 'docs', 'figures')


def versions() -> Dict[str, str]:
  out = {'python': platform.python_version()}
  for name, module in (('jax', 'jax'), ('jaxlib', 'jaxlib'), ('flax', 'flax'),
                       ('optax', 'optax'), ('orbax', 'orbax.checkpoint'),
                       ('numpy', 'numpy'), ('dynamics', 'dynamics')):
    try:
      out[name] = str(getattr(importlib.import_module(module), '__version__', '?'))
    except ImportError:
      out[name] = 'absent'
  return out


def machine() -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {'platform': platform.platform(), 'processor': platform.processor()
          or platform.machine(), 'cpu_count': os.cpu_count(),
          'devices': [d.device_kind for d in jax.devices()]}


def mean_std(values: Sequence[float]) -> Dict[str, float]:
  """``{'mean', 'std', 'n', 'values'}`` (std with ddof=1; 0 for one value)."""
  v = np.asarray(values, np.float64)
  std = float(v.std(ddof=1)) if v.size > 1 else 0.0
  return {'mean': float(v.mean()), 'std': std, 'n': int(v.size),
          'values': [float(x) for x in v]}


def compare(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
  """Whether the means of ``a`` and ``b`` differ beyond noise.

  Returns ``{'a', 'b' (mean_std each), 'difference' (mean a - mean b),
  'stderr' (of the difference), 'verdict'}`` with verdict 'within noise' when
  ``|difference| <= 2 stderr``, else 'a lower' or 'a higher'.

  Example:
    >>> compare([1.0, 1.1, 0.9], [1.05, 0.95, 1.0])['verdict']
    'within noise'
    >>> compare([1.0, 1.01, 0.99], [2.0, 2.01, 1.99])['verdict']
    'a lower'
  """
  sa, sb = mean_std(a), mean_std(b)
  stderr = math.sqrt(sa['std'] ** 2 / sa['n'] + sb['std'] ** 2 / sb['n'])
  diff = sa['mean'] - sb['mean']
  verdict = ('within noise' if abs(diff) <= 2 * stderr
             else 'a lower' if diff < 0 else 'a higher')
  return {'a': sa, 'b': sb, 'difference': diff, 'stderr': stderr,
          'verdict': verdict}


def verdict(comparison: Mapping[str, Any], lower: str, higher: str,
            within: str = 'within noise',
            one_seed: str = 'one seed: no verdict') -> str:
  """A `compare` verdict in words: ``within``, ``lower`` (a below b) or
  ``higher``; ``one_seed`` when a side has one value (no noise estimate).

  Example:
    >>> verdict(compare([1.0, 1.01, 0.99], [2.0, 2.01, 1.99]), 'A wins', 'B wins')
    'A wins'
    >>> verdict(compare([1.0], [2.0]), 'A wins', 'B wins')
    'one seed: no verdict'
  """
  if min(comparison['a']['n'], comparison['b']['n']) < 2:
    return one_seed
  return {'within noise': within, 'a lower': lower,
          'a higher': higher}[comparison['verdict']]


def fmt_mean_std(stats: Mapping[str, float], digits: int = 3) -> str:
  """``'2.731 ± 0.004'`` from a `mean_std` dict."""
  return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def result_path(name: str, size: str, out_dir: Optional[str] = None) -> str:
  """``results/NAME.json`` at full size; ``NAME.smoke.json`` at smoke size."""
  suffix = '' if size == 'full' else f'.{size}'
  return os.path.join(out_dir or RESULTS_DIR, f'{name}{suffix}.json')


def write_result(path: str, name: str, size: str, seeds: Sequence[int],
                 numbers: Mapping[str, Any], configs: Mapping[str, Any],
                 wall_seconds: float, command: Optional[str] = None) -> Dict[str, Any]:
  """Writes the results file (atomically) and returns its content."""
  record = {
      'name': name, 'size': size, 'seeds': [int(s) for s in seeds],
      'command': command or ' '.join(['python -m experiments.reproduce']
                                     + sys.argv[1:]),
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'wall_seconds': round(float(wall_seconds), 1),
      'versions': versions(), 'machine': machine(),
      'configs': dict(configs), 'numbers': dict(numbers),
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True, default=_jsonable)
  os.replace(path + '.tmp', path)
  return record


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f'not JSON-able: {type(x).__name__}')


def read_result(name: str, size: str = 'full',
                out_dir: Optional[str] = None) -> Dict[str, Any]:
  """The committed (or last written) results file of a reproduction."""
  with open(result_path(name, size, out_dir)) as f:
    return json.load(f)


def config_record(config) -> Dict[str, Any]:
  """A config as recorded in results files (its JSON form)."""
  return json.loads(config.to_json_best_effort())


def lr_table(config, num_steps: Optional[int] = None) -> np.ndarray:
  """The learning rate of updates ``0 .. T-1`` under ``config``'s schedule
  (`dynamics.schedules.from_config`; ``T`` defaults to ``config.num_steps``)."""
  from dynamics import schedules  # pylint: disable=g-import-not-at-top
  steps = np.arange(int(num_steps or config.num_steps))
  return np.asarray(schedules.from_config(config)(steps), np.float32)
