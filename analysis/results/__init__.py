"""Reading the reproductions' results: ``results/NAME.json``, from the numbers alone.

A results file (written by ``python -m experiments.reproduce NAME``) holds::

  {"name", "size", "seeds", "command", "date", "wall_seconds",
   "versions": {python, jax, jaxlib, flax, optax, orbax, numpy, dynamics},
   "machine": {platform, processor, cpu_count, devices},
   "configs": {label: the config record of each kind of run},
   "numbers": {...every number the README or a notebook quotes...}}

This package reads it; nothing here trains. `read_result` opens a file,
`provenance`, `claim_lines` and `redraw` are what every notebook prints and
draws, and `mean_std`, `compare`, `verdict` and `fmt_mean_std` are the
statistics the reproductions record and print (`compare` stores means,
standard errors and the per-seed values; `verdict` words a difference only
through `analysis.stats`: a t-test with at least five seeds). One module per reproduction,
``analysis.results.NAME``, turns its numbers into what a reader sees:

* ``FIGURES`` and ``plot(numbers, figures_dir) -> paths``: the figures under
  ``docs/figures/``, drawn from the numbers alone;
* ``readme_row(numbers) -> str``: the README's table row(s);
* ``claims(numbers) -> {claim: bool}``: the paper's claims, checked;
* and the lines its notebook prints (``summary`` or ``report_lines``).

The notebooks of ``analysis/notebooks/`` import these modules, and so does
``python -m experiments.reproduce``: the figures and rows of a fresh run and
of the committed JSON come from the same code.
"""

import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(ROOT, 'results')
FIGURES_DIR = os.path.join(ROOT, 'docs', 'figures')


def figures_dir() -> str:
  """Where the notebooks draw (created): ``$DYNAMICS_FIGURES_DIR`` (the tests
  set it), else ``docs/figures``."""
  path = os.environ.get('DYNAMICS_FIGURES_DIR') or FIGURES_DIR
  os.makedirs(path, exist_ok=True)
  return path


def redraw(plot: Callable[[Mapping[str, Any], str], List[str]],
           numbers: Mapping[str, Any]) -> str:
  """Draws a reproduction's figures (its ``plot``) from ``numbers`` into
  `figures_dir`; the line that names them."""
  paths = plot(numbers, figures_dir())
  return 'drew ' + ', '.join(os.path.basename(p) for p in paths)


def provenance(record: Mapping[str, Any]) -> str:
  """Where a results file comes from, in one line.

  Example:
    >>> provenance({'command': 'python -m experiments.reproduce x',
    ...             'size': 'full', 'seeds': [0, 1], 'wall_seconds': 754.0,
    ...             'machine': {'cpu_count': 2}, 'date': '2026-01-02T03:04:05'})
    'python -m experiments.reproduce x (full size, seeds [0, 1], 13 min on 2 CPUs, 2026-01-02T03:04:05)'
  """
  wall = record['wall_seconds']
  took = f'{wall:.0f} s' if wall < 90 else f'{wall / 60:.0f} min'
  return (f"{record['command']} ({record['size']} size, seeds "
          f"{record['seeds']}, {took} on {record['machine']['cpu_count']} "
          f"CPUs, {record['date']})")


def claim_lines(claims: Mapping[str, bool]) -> List[str]:
  """``'reproduced: CLAIM'`` or ``'NOT reproduced: CLAIM'`` per claim.

  Example:
    >>> claim_lines({'GD hovers at 2/eta': True, 'SAM settles lower': False})
    ['reproduced: GD hovers at 2/eta', 'NOT reproduced: SAM settles lower']
  """
  return [f"{'reproduced' if holds else 'NOT reproduced'}: {claim}"
          for claim, holds in claims.items()]


def result_path(name: str, size: str, out_dir: Optional[str] = None) -> str:
  """``results/NAME.json`` at full size; ``NAME.smoke.json`` at smoke size."""
  suffix = '' if size == 'full' else f'.{size}'
  return os.path.join(out_dir or RESULTS_DIR, f'{name}{suffix}.json')


def read_result(name: str, size: str = 'full',
                out_dir: Optional[str] = None) -> Dict[str, Any]:
  """The committed (or last written) results file of a reproduction."""
  with open(result_path(name, size, out_dir)) as f:
    return json.load(f)


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


def test_word(comparison: Mapping[str, Any]) -> str:
  """The `analysis.stats` verdict of a stored `compare` result: 'a lower',
  'a higher', 'within noise' or 'no verdict' (the t-test `verdict` words,
  never the 2-standard-error ``comparison['verdict']`` stored beside it).

  Example:
    >>> test_word(compare([1.0, 1.01, 0.99], [2.0, 2.01, 1.99]))
    'no verdict'
    >>> test_word(compare([1.0, 1.01, 0.99, 1.0, 1.02], [2.0, 2.01, 1.99, 2.0, 2.0]))
    'a lower'
  """
  test = _t_test(comparison)
  return 'no verdict' if test is None else test['verdict']


def _t_test(comparison: Mapping[str, Any]) -> Dict[str, Any] | None:
  """`analysis.stats.compare` of a stored `compare` result's per-seed
  values: paired when both sides hold one value per seed (the reproductions
  run both methods on the same seeds), Welch's otherwise; None when a side
  holds a non-finite value (a run diverged)."""
  from analysis import stats  # pylint: disable=g-import-not-at-top
  a, b = comparison['a']['values'], comparison['b']['values']
  if not np.all(np.isfinite(a + b)):
    return None
  return stats.compare(a, b, paired=len(a) == len(b))


def verdict(comparison: Mapping[str, Any], lower: str, higher: str,
            within: str = 'within noise') -> str:
  """The verdict a reader sees, from `analysis.stats` (never the 2-standard-
  error rule of `compare`): a t-test on the per-seed values of a `compare`
  result -- paired when both sides hold one value per seed (the
  reproductions run both methods on the same seeds), Welch's otherwise --
  worded with its test, n and p; "no verdict" below `analysis.stats.MIN_N`
  seeds or when a side holds a non-finite value.

  Example:
    >>> verdict(compare([1.0, 1.01, 0.99], [2.0, 2.01, 1.99]), 'A wins', 'B wins')
    'no verdict: 3 seeds (a verdict needs 5)'
    >>> five = compare([1.0, 1.01, 0.99, 1.0, 1.02], [2.0, 2.01, 1.99, 2.0, 2.0])
    >>> verdict(five, 'A wins', 'B wins')
    'A wins (p < 0.0001, paired t, 5 seeds)'
    >>> verdict(compare([1.0], [2.0]), 'A wins', 'B wins')
    'no verdict: 1 seed'
  """
  from analysis import stats  # pylint: disable=g-import-not-at-top
  c = _t_test(comparison)
  if c is None:
    return 'no verdict: a run diverged'
  a, b = comparison['a']['values'], comparison['b']['values']
  # The stored per-side counts, so that the README check ties the printed n
  # to the results file (tests/readme_numbers.py).
  c['n'] = min(comparison['a'].get('n', len(a)), comparison['b'].get('n', len(b)),
               key=int)
  return stats.verdict(c, lower, higher, within)


def fmt_mean_std(stats: Mapping[str, float], digits: int = 3) -> str:
  """``'2.731 ± 0.004'`` from a `mean_std` dict."""
  return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
