"""What every reproduction's run shares: writing the results file.

`result_record` holds the numbers with the command, seeds, package versions,
machine, wall time and `dynamics.provenance` (git commit and dirty flag, CPU
model, cores, 1-minute load at the start -- this module's import, at the
command's start -- and at the end), and `write_result` writes it. The format is described
in `analysis.results`, which reads the files and holds the statistics the
numbers are made of (``mean_std``, ``compare``).
"""

import datetime
import importlib
import os
import platform
import sys
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from dynamics import outputs, provenance


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


def result_record(name: str, size: str, seeds: Sequence[int],
                  numbers: Mapping[str, Any], configs: Mapping[str, Any],
                  wall_seconds: float, command: Optional[str] = None
                  ) -> Dict[str, Any]:
  """The content of a results file (the format: `analysis.results`)."""
  return {
      'name': name, 'size': size, 'seeds': [int(s) for s in seeds],
      'command': command or ' '.join(['python -m experiments.reproduce']
                                     + sys.argv[1:]),
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'wall_seconds': round(float(wall_seconds), 1),
      'versions': versions(), 'machine': machine(),
      'provenance': provenance.provenance(),
      'configs': dict(configs), 'numbers': dict(numbers),
  }


def write_result(path: str, record: Mapping[str, Any]) -> bool:
  """Writes a results file (atomically); returns whether it replaced one."""
  return outputs.write_json(path, record, indent=1, sort_keys=True,
                            default=_jsonable)


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f'not JSON-able: {type(x).__name__}')


def lr_table(config, num_steps: Optional[int] = None) -> np.ndarray:
  """The learning rate of updates ``0 .. T-1`` under ``config``'s schedule
  (`dynamics.schedules.from_config`; ``T`` defaults to ``config.num_steps``)."""
  from dynamics import schedules  # pylint: disable=g-import-not-at-top
  steps = np.arange(int(num_steps or config.num_steps))
  return np.asarray(schedules.from_config(config)(steps), np.float32)
