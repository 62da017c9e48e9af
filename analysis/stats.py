r"""Significance tests for comparisons between methods, and verdicts in words.

Every comparison a README row or a notebook states goes through this module,
so that "lower" means the same thing everywhere: a two-sided t-test at
``alpha = 0.05`` on at least ``min_n = 5`` seeds. Anything less gives the
words "within noise" (the test ran and found nothing) or "no verdict" (too
few seeds to run it), never a direction.

* `compare(a, b, paired=...)`: the difference of means ``mean(a) - mean(b)``,
  its standard error, a confidence interval and the p-value of a paired t-test
  (the same seeds on both sides: the per-seed differences are tested) or of
  Welch's t-test (independent samples, unequal variances), plus the verdict.
* `reaches_target(values, target)`: the rule of the modded-nanogpt
  optimization track for claims of the kind "reaches loss ``L``": accepted
  only if :math:`(L - \bar x)\sqrt n \ge z\,s`, i.e. a one-sided one-sample
  t-test of "the mean is below ``L``" (``z`` the t quantile at
  ``1 - alpha`` with ``n - 1`` degrees of freedom).
* `ratio_interval(a, b)`: a confidence interval for ``mean(a) / mean(b)``
  of positive quantities (a speedup: steps to a target), from the t-interval
  of the difference of mean logs (a ratio of geometric means).
* `compare_counts(k_a, n_a, k_b, n_b)`: Fisher's exact test of two event
  rates (runs that diverged out of runs), for claims of the kind "diverges
  less often".
* `holm(p_values)`: Holm's step-down adjustment, for a family of comparisons
  that a single sentence summarizes.

Results are plain dicts (JSON-able as they are) so that reproductions store
them in ``results/*.json`` and the README check can find each number.

Example:
  >>> wsd = [2.701, 2.703, 2.699, 2.702, 2.700]
  >>> cos = [2.706, 2.707, 2.705, 2.709, 2.704]
  >>> c = compare(wsd, cos, paired=True)
  >>> c['test'], c['n'], round(c['difference'], 4)
  ('paired t', 5, -0.0052)
  >>> verdict(c, lower='WSD lower', higher='cosine lower')
  'WSD lower (p = 0.00087, paired t, 5 seeds)'
  >>> verdict(compare(wsd[:3], cos[:3], paired=True), 'WSD lower', 'cosine lower')
  'no verdict: 3 seeds (a verdict needs 5)'
"""

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05       # Two-sided significance level of every verdict.
MIN_N = 5          # Seeds (per side) below which no direction is stated.
CONFIDENCE = 0.95  # Level of the reported confidence intervals.


def _values(x: Iterable[float], name: str) -> np.ndarray:
  v = np.asarray(list(x), np.float64).reshape(-1)
  if v.size == 0:
    raise ValueError(f'{name} is empty: a comparison needs values')
  if not np.all(np.isfinite(v)):
    raise ValueError(f'{name} holds non-finite values {v.tolist()}: compare '
                     'finite results only (say what diverged instead)')
  return v


def summary(values: Iterable[float]) -> Dict[str, Any]:
  """``{'mean', 'std', 'n', 'values'}`` (sample std, ddof=1; 0 for one value).

  Example:
    >>> summary([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'n': 3, 'values': [1.0, 2.0, 3.0]}
  """
  v = _values(values, 'values')
  return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if v.size > 1
          else 0.0, 'n': int(v.size), 'values': [float(x) for x in v]}


def _t_test(diff: float, stderr: float, df: float) -> float:
  """Two-sided p-value of ``diff / stderr`` under Student's t with ``df``."""
  if stderr == 0.0:
    return 0.0 if diff != 0.0 else 1.0
  return float(2.0 * scipy_stats.t.sf(abs(diff) / stderr, df))


def compare(a: Iterable[float], b: Iterable[float], *, paired: bool,
            alpha: float = ALPHA, min_n: int = MIN_N,
            confidence: float = CONFIDENCE) -> Dict[str, Any]:
  r"""Tests whether ``mean(a)`` and ``mean(b)`` differ.

  Paired (``a[i]`` and ``b[i]`` share seed ``i``): a one-sample t-test on
  :math:`d_i = a_i - b_i`, standard error :math:`s_d/\sqrt n`, ``n - 1``
  degrees of freedom. Unpaired: Welch's t-test, standard error
  :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` with the Welch-Satterthwaite degrees
  of freedom.

  Args:
    a, b: one value per seed (finite).
    paired: whether ``a[i]`` and ``b[i]`` come from the same seed (then
      ``len(a) == len(b)`` is required).
    alpha: two-sided significance level of the verdict.
    min_n: fewest values per side for a directional verdict.
    confidence: level of the interval ``ci`` of the difference.

  Returns:
    ``{'a', 'b'}`` (`summary` of each), ``'difference'`` (mean a - mean b),
    ``'stderr'``, ``'df'``, ``'t'``, ``'p'`` (None when a side has one value),
    ``'ci'`` ([low, high] or None), ``'test'`` ('paired t' | 'Welch t'),
    ``'n'`` (the smaller side), ``'alpha'``, ``'min_n'`` and ``'verdict'``:
    'a lower' / 'a higher' (p < alpha and n >= min_n), 'within noise'
    (n >= min_n, p >= alpha) or 'no verdict' (too few values).

  Example:
    >>> c = compare([1.0, 1.1, 0.9, 1.05, 0.95], [1.0, 1.0, 1.0, 1.0, 1.0],
    ...             paired=False)
    >>> c['verdict'], round(c['p'], 3)
    ('within noise', 1.0)
  """
  va, vb = _values(a, 'a'), _values(b, 'b')
  if paired and va.size != vb.size:
    raise ValueError(f'a paired comparison needs one value per seed on both '
                     f'sides: got {va.size} and {vb.size}')
  sa, sb = summary(va), summary(vb)
  diff = sa['mean'] - sb['mean']
  n = int(min(va.size, vb.size))
  if paired:
    d = va - vb
    stderr = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    df = float(n - 1)
    test = 'paired t'
  else:
    var_a = sa['std'] ** 2 / va.size
    var_b = sb['std'] ** 2 / vb.size
    stderr = math.sqrt(var_a + var_b) if n > 1 else math.nan
    denominator = ((var_a ** 2 / (va.size - 1) if va.size > 1 else 0.0)
                   + (var_b ** 2 / (vb.size - 1) if vb.size > 1 else 0.0))
    df = ((var_a + var_b) ** 2 / denominator if denominator > 0
          else float(va.size + vb.size - 2))
    test = 'Welch t'
  if n < 2:
    p, t, ci = None, None, None
  else:
    p = _t_test(diff, stderr, df)
    t = diff / stderr if stderr > 0 else (math.inf if diff else 0.0)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df) * stderr)
    ci = [diff - half, diff + half]
  if n < min_n or p is None:
    word = 'no verdict'
  elif p < alpha:
    word = 'a lower' if diff < 0 else 'a higher'
  else:
    word = 'within noise'
  return {'a': sa, 'b': sb, 'difference': float(diff),
          'stderr': None if n < 2 else float(stderr), 'df': df if n > 1 else None,
          't': None if t is None else float(t), 'p': p, 'ci': ci,
          'confidence': confidence, 'test': test, 'n': n, 'alpha': alpha,
          'min_n': min_n, 'verdict': word}


def compare_counts(k_a: int, n_a: int, k_b: int, n_b: int, *,
                   alpha: float = ALPHA, min_n: int = MIN_N) -> Dict[str, Any]:
  r"""Tests whether the rate of an event (a run diverging) differs between
  ``a`` (``k_a`` of ``n_a`` runs) and ``b`` (``k_b`` of ``n_b``): Fisher's
  exact test, two-sided, on the 2x2 table. The result has `compare`'s keys
  that `verdict` reads (``'a lower'``: fewer events in ``a``).

  Example:
    >>> c = compare_counts(0, 5, 5, 5)
    >>> c['test'], round(c['p'], 4), c['verdict']
    ('Fisher exact', 0.0079, 'a lower')
    >>> verdict(c, 'A diverges less', 'B diverges less')
    'A diverges less (p = 0.0079, Fisher exact, 5 seeds)'
    >>> compare_counts(1, 5, 4, 5)['verdict']
    'within noise'
  """
  for k, n, name in ((k_a, n_a, 'a'), (k_b, n_b, 'b')):
    if not 0 <= k <= n or n < 1:
      raise ValueError(f'{name}: {k} events in {n} runs')
  n = int(min(n_a, n_b))
  p = float(scipy_stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]])[1])
  diff = k_a / n_a - k_b / n_b
  if n < min_n:
    word = 'no verdict'
  elif p < alpha and diff != 0:
    word = 'a lower' if diff < 0 else 'a higher'
  else:
    word = 'within noise'
  return {'a': {'events': int(k_a), 'n': int(n_a)},
          'b': {'events': int(k_b), 'n': int(n_b)}, 'difference': float(diff),
          'p': p, 'test': 'Fisher exact', 'n': n, 'alpha': alpha,
          'min_n': min_n, 'verdict': word}


def _p_text(p: float) -> str:
  """``p`` as a verdict prints it: two significant digits, three between
  0.01 and 0.1 so that no p-value rounds onto (or across) ``ALPHA``
  (0.0496 prints 'p = 0.0496', never 'p = 0.05').

  Example:
    >>> [_p_text(p) for p in (3e-5, 0.0027, 0.0496, 0.05, 0.113)]
    ['p < 0.0001', 'p = 0.0027', 'p = 0.0496', 'p = 0.05', 'p = 0.11']
  """
  if p < 1e-4:
    return 'p < 0.0001'
  if p < 0.01:
    return f'p = {p:.2g}'
  return f'p = {p:.3g}' if p < 0.1 else f'p = {p:.2f}'


def _seeds(n: int) -> str:
  return f'{n} seed' + ('' if n == 1 else 's')


def verdict(comparison: Dict[str, Any], lower: str, higher: str,
            within: str = 'within noise') -> str:
  """A `compare` result in words that name the test, n and p.

  ``lower`` / ``higher`` name what a significant negative / positive
  difference (a - b) means, e.g. 'WSD lower' / 'cosine lower'.

  Example:
    >>> c = compare([1.0, 1.01, 0.99, 1.0, 1.02], [2.0, 2.01, 1.99, 2.0, 2.0],
    ...             paired=True)
    >>> verdict(c, 'A lower', 'B lower')
    'A lower (p < 0.0001, paired t, 5 seeds)'
    >>> verdict(compare([1.0], [2.0], paired=True), 'A lower', 'B lower')
    'no verdict: 1 seed'
  """
  c = comparison
  n = c['n']
  if c['verdict'] == 'no verdict':
    if n < 2:
      return f'no verdict: {_seeds(n)}'
    return f"no verdict: {_seeds(n)} (a verdict needs {c['min_n']})"
  words = {'a lower': lower, 'a higher': higher, 'within noise': within}
  return f"{words[c['verdict']]} ({_p_text(c['p'])}, {c['test']}, {_seeds(n)})"


def reaches_target(values: Iterable[float], target: float, *,
                   alpha: float = ALPHA, min_n: int = MIN_N) -> Dict[str, Any]:
  r"""Whether runs reach ``target`` (lower is better), by the track-3 rule.

  Accepted when :math:`(L - \bar x)\sqrt n \ge z\,s` with ``L = target``,
  :math:`\bar x, s` the mean and sample standard deviation of ``values`` and
  ``z`` the one-sided t quantile at ``1 - alpha`` with ``n - 1`` degrees of
  freedom (a one-sided one-sample t-test of "the mean is below L"); never
  with fewer than ``min_n`` values.

  Returns:
    ``{'target', 'n', 'mean', 'std', 'z', 'margin' ((L - mean) sqrt n - z s),
    'p' (one-sided), 'accepted', 'verdict'}`` with verdict 'reaches' /
    'does not reach' / 'no verdict'.

  Example:
    >>> r = reaches_target([3.27, 3.275, 3.272, 3.268, 3.271], 3.28)
    >>> r['accepted'], r['verdict']
    (True, 'reaches')
    >>> reaches_target([3.27, 3.29, 3.30, 3.26, 3.281], 3.28)['verdict']
    'does not reach'
  """
  v = _values(values, 'values')
  n = int(v.size)
  mean, std = float(v.mean()), float(v.std(ddof=1)) if n > 1 else 0.0
  if n < 2:
    z, margin, p = None, None, None
  else:
    z = float(scipy_stats.t.ppf(1 - alpha, n - 1))
    margin = (target - mean) * math.sqrt(n) - z * std
    p = (float(scipy_stats.t.sf((target - mean) * math.sqrt(n) / std, n - 1))
         if std > 0 else (0.0 if mean < target else 1.0))
  accepted = bool(n >= min_n and margin is not None and margin >= 0)
  word = ('no verdict' if n < min_n else
          'reaches' if accepted else 'does not reach')
  return {'target': float(target), 'n': n, 'mean': mean, 'std': std, 'z': z,
          'margin': margin, 'p': p, 'alpha': alpha, 'min_n': min_n,
          'accepted': accepted, 'verdict': word}


def ratio_interval(a: Iterable[float], b: Iterable[float], *, paired: bool,
                   confidence: float = CONFIDENCE) -> Dict[str, Any]:
  """``mean(a) / mean(b)`` of positive values with a confidence interval.

  The interval is the exponential of the t-interval of the difference of
  mean logs (`compare` on ``log a``, ``log b``): the ratio of geometric
  means, the usual form for speedups. ``ratio`` is the ratio of geometric
  means too, so it lies inside its interval.

  Example:
    >>> r = ratio_interval([200, 210, 190, 205, 195], [100, 104, 98, 101, 97],
    ...                    paired=True)
    >>> round(r['ratio'], 2), r['low'] > 1.9, r['high'] < 2.1
    (2.0, True, True)
  """
  va, vb = _values(a, 'a'), _values(b, 'b')
  if np.any(va <= 0) or np.any(vb <= 0):
    raise ValueError('ratio_interval needs positive values')
  c = compare(np.log(va), np.log(vb), paired=paired, confidence=confidence,
              min_n=1)
  ratio = math.exp(c['difference'])
  low, high = ((math.exp(c['ci'][0]), math.exp(c['ci'][1]))
               if c['ci'] is not None else (None, None))
  return {'ratio': ratio, 'low': low, 'high': high, 'confidence': confidence,
          'test': c['test'], 'n': c['n'], 'p': c['p']}


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
  """Holm-Bonferroni adjusted p-values, in the order given (None stays None).

  Example:
    >>> holm([0.01, 0.04, 0.03, None])
    [0.03, 0.06, 0.06, None]
  """
  indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
  m = len(indexed)
  out: List[Optional[float]] = [None] * len(p_values)
  running = 0.0
  for rank, (p, i) in enumerate(indexed):
    running = max(running, min(1.0, (m - rank) * p))
    out[i] = round(running, 12)
  return out


def adjusted(comparisons: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The comparisons of one family with Holm-adjusted p-values and verdicts.

  Each result gets ``'p_raw'`` (its own p) and ``'p'`` replaced by the
  adjusted one; directional verdicts that lose significance become 'within
  noise'. Use it where one sentence summarizes several comparisons (e.g.
  "lower at every budget").
  """
  ps = holm([c['p'] if c['verdict'] != 'no verdict' else None
             for c in comparisons])
  out = []
  for c, p in zip(comparisons, ps):
    c = dict(c, p_raw=c['p'])
    if p is not None:
      c['p'] = p
      c['test'] = c['test'] + ', Holm'
      if p >= c['alpha']:
        c['verdict'] = 'within noise'
    out.append(c)
  return out
