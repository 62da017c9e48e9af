"""The README's numbers cannot drift from the results that produced them.

Every row of the README's "Reproductions" table must be exactly the row its
reproduction module formats from the committed ``results/NAME.json``
(``readme_row``), every committed result must have its rows in the table, and
every number printed in a row must be a number of the JSON at the printed
precision (small formula constants and "~published" values excepted). Regenerate with ``python -m experiments.reproduce NAME``.
"""

import importlib
import json
import os
import re

import pytest

from analysis import results
from experiments.reproductions import REPRODUCTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_rows():
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split('### Reproductions', 1)[1]
  section = re.split(r'\n#{2,3} ', section, maxsplit=1)[0]
  return [line.strip() for line in section.splitlines()
          if line.startswith('|') and not re.match(r'^\|[\s|:-]*\|$', line.strip())]


def _committed():
  return [name for name in REPRODUCTIONS
          if os.path.exists(results.result_path(name, 'full'))]


def _module(name):
  return importlib.import_module(f'analysis.results.{REPRODUCTIONS[name]}')


def _rows(name, numbers):
  return [r.strip() for r in _module(name).readme_row(numbers).split('\n') if r.strip()]


_NUMBER = re.compile(r'(?<![\w.])[-\u2212]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?'
                     r'(?:%|[kMB](?![a-z]))?')
# Citations and the papers' own figures, e.g. "(Tissue et al., 2024)" or
# "(the paper: 60M-1B parameters)": quoted, not measured here.
_QUOTED = re.compile(r'\([^()]*(?:et al\.|paper|published)[^()]*\)')


def _leaves(value):
  """Every number in a JSON value (bools excluded), and every list's length."""
  if isinstance(value, dict):
    for v in value.values():
      yield from _leaves(v)
  elif isinstance(value, list):
    yield float(len(value))
    for v in value:
      yield from _leaves(v)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield float(value)


def _printed(token):
  """``(value, half a unit of the last printed digit)`` of a number token."""
  t = token.replace('\u2212', '-').replace(',', '')
  scale = {'%': 0.01, 'k': 1e3, 'M': 1e6, 'B': 1e9}.get(t[-1], 1.0)
  t = t.rstrip('%kMB')
  mantissa, _, exponent = t.partition('e')
  decimals = len(mantissa.split('.')[1]) if '.' in mantissa else 0
  half = 0.5 * 10.0 ** (-decimals) * 10.0 ** int(exponent or 0)
  return float(t) * scale, half * scale


def _unexplained(row, record):
  """Numbers printed in ``row`` that no number of ``record`` rounds to."""
  text = row.split('|')[2] if row.count('|') >= 3 else row  # The prose cell.
  text = _QUOTED.sub('', text)
  known = list(_leaves(record['numbers'])) + list(_leaves(record['configs']))
  known += [float(s) for s in record['seeds']]
  out = []
  for m in _NUMBER.finditer(text):
    token = m.group(0)
    value, half = _printed(token)
    approximate = text[max(0, m.start() - 1):m.start()] == '~'
    if approximate or (value == int(value) and 0 <= value <= 10):
      continue  # A published "~38%", or a small constant of a formula.
    if not any(abs(k - value) <= half * (1 + 1e-9) + 1e-12 * abs(k) or
               abs(abs(k) - abs(value)) <= half * (1 + 1e-9) for k in known):
      out.append(token)
  return out


def test_every_reproduction_has_committed_results():
  assert _committed() == list(REPRODUCTIONS)


@pytest.mark.parametrize('name', list(REPRODUCTIONS))
def test_readme_rows_are_formatted_from_the_committed_json(name):
  if name not in _committed():
    pytest.fail(f'results/{name}.json is not committed')
  record = results.read_result(name)
  assert record['size'] == 'full' and record['wall_seconds'] > 0
  assert record['seeds'] and record['configs'] and record['versions']
  rows = _rows(name, record['numbers'])
  assert rows, name
  readme = _readme_rows()
  for row in rows:
    assert row in readme, (
        f'README row of {name} differs from results/{name}.json; '
        f'regenerate it. Expected:\n{row}')
  # Every number printed comes from the JSON, at the printed precision.
  for row in rows:
    assert not _unexplained(row, record), (name, _unexplained(row, record))


def test_no_row_of_the_table_is_typed_by_hand():
  produced = {row for name in _committed()
              for row in _rows(name, results.read_result(name)['numbers'])}
  hand_typed = [row for row in _readme_rows() if row not in produced]
  assert not hand_typed, hand_typed


def test_the_number_check_finds_a_number_not_in_the_json():
  record = {'numbers': {'loss': 2.7314, 'ratio': 0.0571}, 'configs': {},
            'seeds': [0]}
  assert _unexplained('| x | loss 2.731, ratio 5.7% and 5.71%, 3 seeds |',
                      record) == []
  assert _unexplained('| x | loss 2.732, ratio 5.8% |', record) == [
      '2.732', '5.8%']
  assert _unexplained('| x | 2.731 (Smith et al., 2024; the paper: 60M) |',
                      record) == []


def test_the_row_check_fails_on_a_drifted_number():
  """Not vacuous: a README with one digit changed is caught."""
  name = _committed()[0]
  row = _rows(name, results.read_result(name)['numbers'])[0]
  digits = re.search(r'\d', row.split('|', 2)[-1])
  assert digits, row
  i = len(row) - len(row.split('|', 2)[-1]) + digits.start()
  drifted = row[:i] + str((int(row[i]) + 1) % 10) + row[i + 1:]
  assert drifted not in set(_readme_rows())
  assert json.dumps(row) != json.dumps(drifted)
