"""Every number the README prints, tied to the stored value it comes from.

``results/readme_manifest.json`` lists the README's *units* -- a table row or a
prose paragraph of the sections named in ``SECTIONS`` -- each found by an
``anchor`` (a substring only that unit holds) and each with the list of the
numbers it prints, in reading order. A number entry is one of::

  ["numbers/gd/0.1/mean", "{:.3f}"]   a path in the unit's ``source`` JSON
  ["bench_llm_cpu.json:reader/x", "{:.1f}"]   a path in another results file
  ["=v('a/b') / v('c') / 1e6", "{:.1f}M"]     an expression over paths
                                               (``np``, ``math`` and
                                               ``call('module:fn', ...)``,
                                               library code, allowed)
  ["#20", "why this is a constant"]           printed text that is not a
                                               measurement (2/eta, a width)

and the printed token must equal ``fmt.format(value)`` exactly (the sign, the
digits, a ``%``/``k``/``M`` suffix; a Unicode minus reads as ``-``). A
number the unit prints beyond its list, or an entry left over, is an error, so
no number can be typed by hand or drift from its JSON.

Rows that code formats from a results file -- a reproduction's
``analysis.results.NAME.readme_row(numbers)``, ``bench_hessian_table`` --
name that function in ``"traced": ["module:function", "numbers"]`` (the
second item: the part of the JSON it is given, ``""`` for all of it). The
function is then run on the JSON with every number wrapped so that each
``format`` call records its path and format spec: that record is the row's
map, read off the very code that wrote the row, so it cannot go stale. A
token of the row is tied to the recorded number that printed it, matched on
the row the function writes (so that editing the README cannot re-match a
number to another recorded one); a number that a library's wording prints from one of its constants
(`CODE_CONSTANTS`: "a verdict needs 5" is ``analysis.stats.MIN_N``) is tied
to that constant;
the unit's ``numbers`` list then holds only the tokens no recorded number
printed (derived values, as expressions; constants of the sentence), in
order. `explain` gives the full map of a unit (``python
tests/readme_numbers.py --map`` prints every unit's). `tokens` says what
counts as a number: code spans, image and link targets, and digits glued to a
name (``float32``, ``LLaMA-60M``, ``GPT-2``, ``2048^2``) are not numbers.

To add a row: write it in the README, then run
``python tests/readme_numbers.py 'ANCHOR' results/NAME.json`` -- it prints a
draft manifest unit with, for each number, the paths whose value prints as
that token (the first taken, the others listed under ``"alternatives"`` to
choose from; ``"#..."`` with ``"why": "TODO"`` where none does). Pick the
right path, write why for each constant, drop the ``alternatives`` and paste
the unit into ``results/readme_manifest.json``.
"""

import contextlib
import importlib
import json
import math
import os
import re
import sys

import numpy as np
from typing import Any, Dict, Iterator, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'results')
MANIFEST = os.path.join(RESULTS, 'readme_manifest.json')

# Sections whose every number is tied to a stored value: (heading, where the
# checked text ends: the next heading of this level or higher, or a regex).
SECTIONS = (
    ('## Two commands', r'\n## '),
    ("## Running the papers' settings", r'\n## '),
    ('## Figures and benchmarks', r'\n## '),
)
# In "Running the papers' settings", only the throughput table and the
# paragraph above it are measurements; the rest of the section is commands.
_START_AT = {"## Running the papers' settings": 'Measured on the development machine'}

_NUMBER = re.compile(r'[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?'
                     r'(?:e[-+]?\d+)?(?:%|[kMB](?![A-Za-z]))?')


def _blank(text: str, pattern: str) -> str:
  return re.sub(pattern, lambda m: ' ' * len(m.group(0)), text)


def tokens(text: str) -> List[Tuple[int, int, str]]:
  """``(start, end, token)`` of every number printed in ``text``.

  Example:
    >>> [t for _, _, t in tokens('loss -0.03 vs +1.2e-03, 1.88-1.94x, 5,313 '
    ...  'params, 22.7M tokens/s at 14% (`--steps=2`), LLaMA-60M, float32')]
    ['-0.03', '+1.2e-03', '1.88', '1.94', '5,313', '22.7M', '14%']
  """
  clean = _blank(text, r'`[^`]*`')
  clean = _blank(clean, r'!\[[^\]]*\]\([^)]*\)')
  clean = re.sub(r'\]\([^)]*\)', lambda m: ']' + ' ' * (len(m.group(0)) - 1),
                 clean)
  out = []
  for m in _NUMBER.finditer(clean):
    start, token = m.start(), m.group(0)
    before = clean[start - 1] if start else ' '
    if token[0] in '-+\u2212':
      if before.isalnum() or before in '_.':
        # A hyphen: "1.88-1.94" is a range; "LLaMA-60M", "x86-64" are names.
        run = re.search(r'[A-Za-z0-9_.]*$', clean[:start]).group(0)
        if run[:1].isalpha():
          continue
        start, token = start + 1, token[1:]
    elif before.isalnum() or before in '_.^':
      continue
    if re.match(r'\.\d', clean[m.end():m.end() + 2]):
      continue  # A version, "0.10.2".
    out.append((start, start + len(token), token))
  return out


def _section(readme: str, heading: str, end: str) -> str:
  i = readme.index('\n' + heading + '\n')
  rest = readme[i + 1:]
  m = re.search(end, rest[len(heading):])
  body = rest[:len(heading) + m.start()] if m else rest
  if heading in _START_AT:
    body = body[body.index(_START_AT[heading]):]
  return body


def units(readme: str) -> List[str]:
  """The checked units of ``readme``: each table row and each paragraph
  (outside code blocks) of `SECTIONS` that prints a number."""
  out = []
  for heading, end in SECTIONS:
    body = _section(readme, heading, end)
    body = re.sub(r'```.*?```', '', body, flags=re.S)
    for block in re.split(r'\n\s*\n', body):
      lines = [l for l in block.strip().splitlines() if not l.startswith('#')]
      if any(l.startswith('|') for l in lines):
        out += [l.strip() for l in lines if l.startswith('|')]
        # Table separators and headers print no number: tokens() drops them.
      elif lines:
        out.append(' '.join(l.strip() for l in lines))
  return [u for u in out if tokens(u)]


def read_readme() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def read_manifest() -> Dict[str, Any]:
  with open(MANIFEST) as f:
    return json.load(f)


_FILES: Dict[str, Any] = {}


def _load(name: str) -> Any:
  if name not in _FILES:
    with open(os.path.join(RESULTS, name)) as f:
      _FILES[name] = json.load(f)
  return _FILES[name]


def lookup(path: str, source: str) -> Any:
  """The value at ``path`` (``a/b/0/c``; ``FILE.json:a/b`` for another file;
  ``len(a/b)`` for a list's length) in results file ``source``."""
  if path.startswith('len(') and path.endswith(')'):
    return len(lookup(path[4:-1], source))
  if ':' in path:
    source, path = path.split(':', 1)
  value = _load(source)
  for key in path.split('/'):
    value = value[int(key)] if isinstance(value, list) else value[key]
  return value


def _call(function: str, *args: Any) -> Any:
  """``module:name`` called on ``args``: a value library code derives from
  stored ones (e.g. ``analysis.results.river_valley:law_in_nats``)."""
  module, name = function.split(':')
  return getattr(importlib.import_module(module), name)(*args)


def expected(entry: List[str], source: str) -> str:
  """The text a manifest entry says the README prints."""
  what, fmt = entry
  if what.startswith('#'):
    return what[1:]
  if what.startswith('='):
    value = eval(what[1:], {'v': lambda p: lookup(p, source), 'math': math,  # pylint: disable=eval-used
                            'np': np, 'call': _call,
                            'len': len, 'min': min, 'max': max, 'abs': abs,
                            'sorted': sorted, 'sum': sum})
  else:
    value = lookup(what, source)
  return fmt.format(value)


def _norm(token: str) -> str:
  return token.replace('\u2212', '-')


class _Float(float):
  """A float that records its path and format spec when formatted."""

  def __new__(cls, value, path, log):
    self = super().__new__(cls, value)
    self.path, self.log = path, log
    return self

  def __format__(self, spec):
    out = float.__format__(float(self), spec)
    self.log.append((out, self.path, '{:' + spec + '}'))
    return out


class _Int(int):
  """An int that records its path and format spec when formatted."""

  def __new__(cls, value, path, log):
    self = super().__new__(cls, value)
    self.path, self.log = path, log
    return self

  def __format__(self, spec):
    out = int.__format__(int(self), spec)
    self.log.append((out, self.path, '{:' + spec + '}'))
    return out

  def __str__(self):
    return self.__format__('')


def _wrap(value: Any, path: str, log: list) -> Any:
  join = lambda k: f'{path}/{k}' if path else str(k)
  if isinstance(value, dict):
    return {k: _wrap(v, join(k), log) for k, v in value.items()}
  if isinstance(value, list):
    return [_wrap(v, join(i), log) for i, v in enumerate(value)]
  if isinstance(value, bool):
    return value
  if isinstance(value, int):
    return _Int(value, path, log)
  if isinstance(value, float):
    return _Float(value, path, log)
  return value


@contextlib.contextmanager
def _recording_p_values(log: list):
  """Records the p-values a verdict prints (`analysis.stats._p_text`): each is
  computed by the library's test from the stored per-seed values while the
  row is formatted, so the printed p is tied to the results file as the
  traced numbers are (a shifted digit no longer matches the recomputed p)."""
  from analysis import stats  # pylint: disable=g-import-not-at-top
  original = stats._p_text  # pylint: disable=protected-access

  def recording(p):
    text = original(p)
    number = text.split()[-1]
    log.append((number, 'analysis.stats: p of the t-test on the stored '
                'per-seed values', '{}'))
    return text

  stats._p_text = recording  # pylint: disable=protected-access
  try:
    yield
  finally:
    stats._p_text = original  # pylint: disable=protected-access


_TRACES: Dict[Tuple[str, str, str], Tuple[List[Tuple[str, str, str]], str]] = {}


def traced(function: str, part: str, source: str
           ) -> Tuple[List[Tuple[str, str, str]], str]:
  """``([(printed text, path, format)], output)``: every number ``function``
  (a ``module:name``) formats when given ``part`` of results file
  ``source``, and the text it returns."""
  key = (function, part, source)
  if key not in _TRACES:
    module, name = function.split(':')
    fn = getattr(importlib.import_module(module), name)
    log = []
    value = lookup(part, source) if part else _load(source)
    with _recording_p_values(log):
      output = fn(_wrap(value, part, log))
    _TRACES[key] = (log, output)
  return _TRACES[key]


def _canonical(text: str, unit: Dict[str, Any]
               ) -> Tuple[Dict[int, Tuple[str, str, str]], Optional[str]]:
  """For a traced unit: token index -> recorded number, aligned on the row
  the function itself writes (so an edited README cannot re-align), and
  that row (None if the function writes no row holding the anchor)."""
  if 'traced' not in unit:
    return {}, text
  events, output = traced(*unit['traced'], unit['source'])
  lines = [r.strip() for r in output.split('\n')]
  rows = [k for k, r in enumerate(lines) if unit['anchor'] in r]
  if len(rows) != 1:
    return {}, None
  # The whole output is aligned (a function writing several rows records
  # the numbers of all of them), then this row's slice is kept: a number of
  # this row never borrows a recorded number that printed in another row.
  printed, start = [], 0
  for k, line in enumerate(lines):
    if k == rows[0]:
      start = len(printed)
    printed += [t for _, _, t in tokens(line)]
  count = len(tokens(lines[rows[0]]))
  aligned = _aligned(printed, events)
  return ({i - start: e for i, e in aligned.items()
           if start <= i < start + count}, lines[rows[0]])


# Numbers that a library's wording prints from its own constants: (the text
# right before the number, as a regex; the constant as module:attribute).
CODE_CONSTANTS = (
    (r'a verdict needs $', 'analysis.stats:MIN_N'),
)


def _code_constant(before: str) -> Any:
  for pattern, where in CODE_CONSTANTS:
    if re.search(pattern, before):
      module, name = where.split(':')
      return where, getattr(importlib.import_module(module), name)
  return None


def _aligned(printed: List[str], events: List[Tuple[str, str, str]]
             ) -> Dict[int, Tuple[str, str, str]]:
  """Token index -> recorded number: a longest common subsequence of the
  texts (so that equal texts keep their order), then, for tokens a reader
  formatted out of order, the first unused recorded number printing them."""
  a, b = [_norm(t) for t in printed], [e[0] for e in events]
  n, m = len(a), len(b)
  lcs = [[0] * (m + 1) for _ in range(n + 1)]
  for i in range(n - 1, -1, -1):
    for j in range(m - 1, -1, -1):
      lcs[i][j] = (lcs[i + 1][j + 1] + 1 if a[i] == b[j]
                   else max(lcs[i + 1][j], lcs[i][j + 1]))
  out, used, i, j = {}, set(), 0, 0
  while i < n and j < m:
    if a[i] == b[j]:
      out[i] = events[j]
      used.add(j)
      i, j = i + 1, j + 1
    elif lcs[i + 1][j] >= lcs[i][j + 1]:
      i += 1
    else:
      j += 1
  for i in range(n):
    if i not in out:
      j = next((j for j in range(m) if j not in used and b[j] == a[i]), None)
      if j is not None:
        out[i] = events[j]
        used.add(j)
  return out


def explain(text: str, unit: Dict[str, Any]
            ) -> Tuple[List[Tuple[str, str, str]], List[str]]:
  """The map of a README unit: ``([(token, path or entry, format)], errors)``."""
  printed = [t for _, _, t in tokens(text)]
  try:
    hits, canonical = _canonical(text, unit)
  except (KeyError, IndexError, TypeError, ValueError, OSError) as e:
    return [], [f"{unit['traced'][0]} fails on {unit['source']}: {e!r}"]
  entries = list(unit.get('numbers', []))
  rows, errors = [], []
  if canonical is None:
    errors.append(f"{unit['traced'][0]} writes no row holding the anchor")
    hits = {}
  starts = [s for s, _, _ in tokens(text)]
  for i, token in enumerate(printed):
    if i in hits:
      if _norm(token) != hits[i][0]:
        errors.append(f'number {i + 1} prints {token}, {hits[i][1]} gives '
                      f'{hits[i][0]}')
      rows.append((token, hits[i][1], hits[i][2]))
      continue
    constant = _code_constant(text[:starts[i]])
    if constant:
      if _norm(token) != str(constant[1]):
        errors.append(f'number {i + 1} prints {token}, {constant[0]} is '
                      f'{constant[1]}')
      rows.append((token, constant[0], '{}'))
      continue
    if not entries:
      errors.append(f'number {i + 1} ({token}) is in no manifest entry')
      continue
    entry = entries.pop(0)
    try:
      want = expected(entry, unit['source'])
    except (KeyError, IndexError, TypeError, ValueError, NameError, OSError) as e:
      errors.append(f'number {i + 1} ({token}): {entry[0]} unreadable: {e!r}')
      continue
    if _norm(token) != _norm(want):
      errors.append(f'number {i + 1} prints {token}, {entry[0]} gives {want}')
    rows.append((token, entry[0], entry[1]))
  if entries:
    errors.append(f'manifest entries with no number printed: {entries}')
  return rows, errors


def check_unit(text: str, unit: Dict[str, Any]) -> List[str]:
  """What is wrong with ``text`` against its manifest ``unit`` ([] if right)."""
  return explain(text, unit)[1]


def check(readme: str, manifest: Dict[str, Any]) -> List[str]:
  """Every error of ``readme`` against ``manifest``: units with no manifest
  entry or several, entries that match no unit, and numbers that differ."""
  errors, used = [], set()
  for text in units(readme):
    found = [i for i, u in enumerate(manifest['units']) if u['anchor'] in text]
    if len(found) != 1:
      errors.append(f'{len(found)} manifest units match (need 1): {text[:90]}')
      continue
    used.add(found[0])
    errors += [f"[{manifest['units'][found[0]]['anchor']}] {e}"
               for e in check_unit(text, manifest['units'][found[0]])]
  stale = [u['anchor'] for i, u in enumerate(manifest['units']) if i not in used]
  if stale:
    errors.append(f'manifest units matching no README unit: {stale}')
  return errors


def shift_last_digit(token: str, up: bool = True) -> str:
  """``token`` moved by one unit in its last printed digit.

  Example:
    >>> shift_last_digit('+0.0009'), shift_last_digit('1.2e-03', up=False)
    ('+0.0010', '1.1e-03')
    >>> shift_last_digit('5,313'), shift_last_digit('-0.30'), shift_last_digit('14%')
    ('5,314', '-0.29', '15%')
  """
  m = re.match(r'^([-+\u2212]?)([\d,]*\d)(?:\.(\d+))?(e[-+]?\d+)?(.*)$', token)
  sign, whole, frac, exp, suffix = m.groups()
  digits = len(frac or '')
  units_ = int((whole.replace(',', '')) + (frac or ''))
  negative = sign in ('-', '\u2212')
  units_ = units_ + (1 if up != negative else -1)
  if units_ < 0:
    units_, sign = -units_, ('+' if negative else '-')
  text = str(units_).rjust(digits + 1, '0')
  whole_, frac_ = (text[:-digits], text[-digits:]) if digits else (text, '')
  if ',' in whole:
    whole_ = f'{int(whole_):,}'
  return sign + whole_ + ('.' + frac_ if digits else '') + (exp or '') + suffix


def _leaves(value: Any, path: str = '') -> Iterator[Tuple[str, Any]]:
  if isinstance(value, dict):
    for k, v in value.items():
      yield from _leaves(v, f'{path}/{k}' if path else str(k))
  elif isinstance(value, list):
    yield f'len({path})', len(value)
    for i, v in enumerate(value):
      yield from _leaves(v, f'{path}/{i}' if path else str(i))
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield path, value


def _formats(token: str) -> List[str]:
  t = _norm(token)
  sign = '+' if t[0] == '+' else ''
  suffix = t[-1] if t[-1] in '%kMB' else ''
  core = t.lstrip('+-').rstrip('%kMB')
  if 'e' in core:
    digits = len(core.split('e')[0].partition('.')[2])
    return [f'{{:{sign}.{digits}e}}']
  digits = len(core.partition('.')[2])
  comma = ',' if ',' in core else ''
  if suffix == '%':
    return [f'{{:{sign}.{digits}%}}']
  base = f'{{:{sign}{comma}.{digits}f}}' + suffix
  return [base] + ([f'{{:{sign}{comma}}}'] if not digits and not suffix else [])


def suggest(anchor: str, source: str, trace: Any = None) -> Dict[str, Any]:
  """A draft manifest unit for the README unit holding ``anchor`` (see the
  module docstring)."""
  text = [u for u in units(read_readme()) if anchor in u]
  if len(text) != 1:
    raise SystemExit(f'{len(text)} README units hold {anchor!r} (need 1)')
  leaves = list(_leaves(_load(source)))
  numbers = []
  unit = {'anchor': anchor, 'source': source}
  if trace:
    unit['traced'] = trace
  printed = [t for _, _, t in tokens(text[0])]
  known = _canonical(text[0], unit)[0]
  starts = [s for s, _, _ in tokens(text[0])]
  for i, token in enumerate(printed):
    if i in known or _code_constant(text[0][:starts[i]]):
      continue
    hits = []
    for fmt in _formats(token):
      scale = {'k': 1e3, 'M': 1e6, 'B': 1e9}.get(fmt[-1], None)
      for path, value in leaves:
        shown = value / scale if scale else value
        try:
          ok = fmt.format(shown) == _norm(token)
        except ValueError:
          ok = False
        if ok:
          hits.append([path if not scale else f"=v('{path}') / {scale:g}", fmt])
    if hits:
      numbers.append({'entry': hits[0], 'token': token,
                      'alternatives': [h[0] for h in hits[1:]]})
    else:
      numbers.append({'entry': ['#' + token, 'TODO'], 'token': token})
  unit['numbers'] = numbers
  return unit


def _main(args: List[str]) -> None:
  if args == ['--map']:
    manifest, readme = read_manifest(), read_readme()
    for text in units(readme):
      unit = [u for u in manifest['units'] if u['anchor'] in text]
      print(f'== {text[:100]}')
      for token, where, fmt in (explain(text, unit[0])[0] if unit else []):
        print(f'  {token:>12}  {where}  {fmt}')
    return
  if len(args) not in (2, 4):
    raise SystemExit(__doc__)
  trace = args[2:] if len(args) == 4 else None
  print(json.dumps(suggest(args[0], os.path.basename(args[1]), trace),
                   indent=1))


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  _main(sys.argv[1:])
