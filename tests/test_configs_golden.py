"""Every shipped config gives the values it gave before the optimizer
sections and the shared smoke shrink (``configs/base.py:smoke``).

``configs_golden.json`` holds the values captured from the configs at
4c182e5 (flat optimizer fields): the defaults, and per config and variant the
fields that differ from them. Both sides are brought to today's layout by
`dynamics.config_migrate.migrate_flat_fields`, and the sections of the
optimizers a config does not select are left out (nothing reads them).

One change is intended: the shared smoke shrink turns the progress bar off,
which two smoke variants had left on (`SHRINK_CHANGES`).
"""

import importlib
import json
import os

import pytest

from configs import base
from dynamics import config_migrate

GOLDEN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'configs_golden.json')
with open(GOLDEN_PATH) as _f:
  GOLDEN = json.load(_f)
SHRINK_CHANGES = {'jacobian:smoke': {'progress': (True, False)},
                  'lazy_rich:smoke': {'progress': (True, False)}}


def _flat(record, prefix=''):
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out


def _nested(flat):
  out = {}
  for key, value in flat.items():
    *path, leaf = key.split('.')
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def canonical(record):
  """Flat values in today's layout, without the unselected optimizers'
  sections."""
  record = config_migrate.migrate_flat_fields(record)
  sections = config_migrate.optimizer_sections(record['optimizer'])
  others = tuple(f'optimizer.{n}.' for n in sections
                 if n != record['optimizer']['name'])
  return {k: v for k, v in _flat(record).items() if not k.startswith(others)}


def _config(key):
  name, _, arg = key.partition(':')
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


def test_the_defaults_are_unchanged():
  assert canonical(base.get_config().to_dict()) == canonical(
      _nested(GOLDEN['defaults']))


@pytest.mark.parametrize('key', sorted(GOLDEN['configs']))
def test_config_values_are_unchanged(key):
  before = canonical(_nested({**GOLDEN['defaults'], **GOLDEN['configs'][key]}))
  after = canonical(_config(key).to_dict())
  changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
             if before.get(k) != after.get(k)}
  assert changed == SHRINK_CHANGES.get(key, {})


def test_the_comparison_sees_a_changed_optimizer_field():
  """The check itself works: a changed value of the selected section differs."""
  golden = _nested({**GOLDEN['defaults'], **GOLDEN['configs']['grokking']})
  config = _config('grokking')
  assert canonical(config.to_dict()) == canonical(golden)
  config.optimizer.adamw.b2 = 0.95
  assert canonical(config.to_dict()) != canonical(golden)
