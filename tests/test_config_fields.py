"""No declared field without a reader: every declared field (dynamics/config_schema.py) is read
somewhere in the library or the commands.

A field is "read" when its name appears as an attribute (``.window``) or key
(``['window']``) in dynamics/, analysis/ or experiments/ (tests, configs and
the validator do not count: a field that is set and validated but that
nothing reads is the defect this catches). A static check: a generic name (``name``, ``decay``) is satisfied by
any reader of that name, so it cannot prove a particular field is used, but
it does catch the fields nothing reads at all.
"""

import os
import re

from configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READERS = ('dynamics', 'analysis', 'experiments')
# Neither the validator nor the declaration itself counts as a reader.
NOT_READERS = (os.path.join(ROOT, 'dynamics', 'config_lib.py'),
               os.path.join(ROOT, 'dynamics', 'config_schema.py'))


def _fields(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


def _library_source():
  chunks = []
  for package in READERS:
    for dirpath, dirnames, files in os.walk(os.path.join(ROOT, package)):
      dirnames[:] = [d for d in dirnames if d != '__pycache__']
      for f in files:
        if f.endswith('.py') and os.path.join(dirpath, f) not in NOT_READERS:
          with open(os.path.join(dirpath, f)) as handle:
            chunks.append(handle.read())
  return '\n'.join(chunks)


def _unread(fields, source):
  return [f for f in fields
          if not re.search(rf"\.{re.escape(f.split('.')[-1])}\b|"
                           rf"\[['\"]{re.escape(f.split('.')[-1])}['\"]\]",
                           source)]


def test_every_declared_field_has_a_reader():
  fields = list(_fields(base.get_config()))
  assert len(fields) > 100  # The walk sees the whole config.
  unread = _unread(fields, _library_source())
  assert not unread, f'declared in dynamics/config_schema.py but read nowhere: {unread}'


def test_the_check_finds_a_field_nobody_reads():
  assert _unread(['data.num_prefetch_workers'], _library_source()) == [
      'data.num_prefetch_workers']
  assert _unread(['merge.window'], 'x = config.merge.window') == []
  assert _unread(['merge.window'], 'window = 3') == ['merge.window']
