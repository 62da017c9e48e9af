"""The README's numbers cannot drift from the results that produced them.

Two checks:

* every row of the "Reproductions" table is exactly the row its reproduction
  module formats from the committed ``results/NAME.json`` (``readme_row``),
  and every committed result has its rows in the table;
* every number printed in the README's measured sections -- the two-commands
  prose, the LLM throughput table, the Reproductions and Benchmarks tables
  and the prose around them -- is tied, at its place and with its sign, to
  one stored value: ``results/readme_manifest.json`` maps each to its JSON
  path and format (or, for rows a function formats, the function, whose
  format calls are recorded), and a unit printing a number the map does not
  cover fails. ``tests/readme_numbers.py`` holds the checker.

Adding a row (a new reproduction, a benchmark): regenerate its JSON, paste its
row into the README, then ``python tests/readme_numbers.py 'ANCHOR'
results/NAME.json [analysis.results.NAME:readme_row numbers]`` prints a draft
manifest unit (the last two arguments for rows formatted by ``readme_row``);
choose among its alternatives, write why for each constant, paste it into
``results/readme_manifest.json`` and run this file. ``python
tests/readme_numbers.py --map`` prints every number with its source.
Regenerate a reproduction with ``python -m experiments.reproduce NAME``.
"""

import doctest
import importlib
import os
import random
import re
import sys

import pytest

from analysis import results
from experiments.reproductions import REPRODUCTIONS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import readme_numbers  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_rows():
  text = readme_numbers.read_readme()
  section = text.split('### Reproductions', 1)[1]
  section = re.split(r'\n#{2,3} ', section, maxsplit=1)[0]
  return [line.strip() for line in section.splitlines()
          if line.startswith('|') and not re.match(r'^\|[\s|:-]*\|$', line.strip())]


def _committed():
  return [name for name in REPRODUCTIONS
          if os.path.exists(results.result_path(name, 'full'))]


def _rows(name, numbers):
  module = importlib.import_module(f'analysis.results.{REPRODUCTIONS[name]}')
  return [r.strip() for r in module.readme_row(numbers).split('\n') if r.strip()]


def _units():
  manifest = readme_numbers.read_manifest()
  out = []
  for text in readme_numbers.units(readme_numbers.read_readme()):
    unit = [u for u in manifest['units'] if u['anchor'] in text]
    out.append((text, unit[0] if len(unit) == 1 else None))
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


def test_no_row_of_the_table_is_typed_by_hand():
  produced = {row for name in _committed()
              for row in _rows(name, results.read_result(name)['numbers'])}
  hand_typed = [row for row in _readme_rows() if row not in produced]
  assert not hand_typed, hand_typed


def test_every_number_is_tied_to_its_stored_value():
  errors = readme_numbers.check(readme_numbers.read_readme(),
                                readme_numbers.read_manifest())
  assert not errors, '\n'.join(errors)


def test_every_reproduction_row_is_in_the_manifest_traced():
  """A reproduction's rows are mapped through its own ``readme_row``."""
  traced = {u['traced'][0] for u in readme_numbers.read_manifest()['units']
            if 'traced' in u}
  for name, module in REPRODUCTIONS.items():
    assert f'analysis.results.{module}:readme_row' in traced, name


def test_shifting_any_number_by_one_in_its_last_digit_fails():
  """Each printed number, moved up and down by one unit in its last digit,
  fails the check of its unit (every number, so also any 20 at random)."""
  missed = []
  for text, unit in _units():
    assert unit is not None, text[:80]
    for start, end, token in readme_numbers.tokens(text):
      for up in (True, False):
        shifted = readme_numbers.shift_last_digit(token, up)
        if not readme_numbers.check_unit(text[:start] + shifted + text[end:],
                                         unit):
          missed.append((unit['anchor'], token, shifted))
  assert not missed, missed


def test_twenty_random_shifts_fail_the_whole_readme_check():
  """The same through the README as a whole: 20 numbers chosen at random."""
  readme = readme_numbers.read_readme()
  manifest = readme_numbers.read_manifest()
  places = []
  for text in readme_numbers.units(readme):
    at = readme.find(text) if text in readme else None
    if at is None:  # A paragraph whose lines were joined: find each number.
      continue
    places += [(at + s, at + e, t) for s, e, t in readme_numbers.tokens(text)]
  assert len(places) > 100
  rng = random.Random()
  for start, end, token in rng.sample(places, 20):
    shifted = readme_numbers.shift_last_digit(token, rng.random() < 0.5)
    drifted = readme[:start] + shifted + readme[end:]
    assert readme_numbers.check(drifted, manifest), (token, shifted)


def test_a_number_the_manifest_does_not_cover_fails():
  text, unit = next((t, u) for t, u in _units() if 'traced' not in u)
  cell = text.rstrip('|').rstrip() + ' and 7.25 |'
  errors = readme_numbers.check_unit(cell, unit)
  assert any('7.25' in e and 'no manifest entry' in e for e in errors), errors
  # A sign flipped is a different number.
  signed = next((t, u, s, e, tok) for t, u in _units()
                for s, e, tok in readme_numbers.tokens(t) if tok[0] in '+-')
  t, u, s, e, tok = signed
  flipped = ('-' if tok[0] == '+' else '+') + tok[1:]
  assert readme_numbers.check_unit(t[:s] + flipped + t[e:], u)


def test_a_unit_without_manifest_entry_and_a_stale_entry_fail():
  readme = readme_numbers.read_readme()
  manifest = readme_numbers.read_manifest()
  extra = readme.replace('\n### Benchmarks (2-core CPU)\n',
                         '\n### Benchmarks (2-core CPU)\n\nA new claim: 3.5x.\n')
  assert any('0 manifest units match' in e
             for e in readme_numbers.check(extra, manifest))
  stale = dict(manifest, units=manifest['units']
               + [{'anchor': 'no such row', 'source': 'x.json', 'numbers': []}])
  assert any('matching no README unit' in e
             for e in readme_numbers.check(readme, stale))


def test_the_checker_examples():
  failures, _ = doctest.testmod(readme_numbers)
  assert failures == 0


def test_the_draft_tool_proposes_paths_and_leaves_traced_numbers_out():
  """``python tests/readme_numbers.py ANCHOR FILE [function part]``, the way
  other rows get their manifest unit."""
  draft = readme_numbers.suggest('| GPT-2 small step, bf16', 'bench_llm_cpu.json')
  by_token = {n['token']: n['entry'] for n in draft['numbers']}
  gpt2 = readme_numbers.lookup('train_step/gpt2', 'bench_llm_cpu.json')
  assert by_token[f"{gpt2['s_per_step']:.1f}"] == [
      'train_step/gpt2/s_per_step', '{:.1f}']
  assert by_token[f"{gpt2['mfu_vs_1.26e11']:.0%}"] == [
      'train_step/gpt2/mfu_vs_1.26e11', '{:.0%}']
  traced = readme_numbers.suggest(
      '| HVP cost / gradient', 'bench_hessian.json',
      ['experiments.bench_hessian_table:readme_rows', ''])
  # 1.62 is printed by the traced function; only the target is left.
  assert [n['token'] for n in traced['numbers']] == ['3']
  # A bare 3 prints from many stored values: proposed, to be chosen by hand
  # (the manifest holds it as a constant, the target).
  assert traced['numbers'][0]['alternatives']
