"""analysis.stats: the tests behind every verdict, checked against scipy's
own implementations and against their error rates under the null."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis import stats

RNG = np.random.default_rng(0)


@pytest.mark.parametrize('n', [2, 5, 9])
def test_paired_test_is_scipy_ttest_rel(n):
  a, b = RNG.normal(size=n), RNG.normal(0.3, size=n)
  c = stats.compare(a, b, paired=True)
  ref = scipy_stats.ttest_rel(a, b)
  assert c['p'] == pytest.approx(ref.pvalue, rel=1e-10)
  assert c['t'] == pytest.approx(ref.statistic, rel=1e-10)
  low, high = ref.confidence_interval(0.95)
  assert c['ci'] == pytest.approx([low, high], rel=1e-10)
  assert c['difference'] == pytest.approx(np.mean(a) - np.mean(b))


@pytest.mark.parametrize('na, nb', [(5, 5), (3, 8)])
def test_unpaired_test_is_scipy_welch(na, nb):
  a, b = RNG.normal(size=na), RNG.normal(1.0, 3.0, size=nb)
  c = stats.compare(a, b, paired=False)
  ref = scipy_stats.ttest_ind(a, b, equal_var=False)
  assert c['test'] == 'Welch t'
  assert c['p'] == pytest.approx(ref.pvalue, rel=1e-10)
  assert c['df'] == pytest.approx(ref.df, rel=1e-10)
  low, high = ref.confidence_interval(0.95)
  assert c['ci'] == pytest.approx([low, high], rel=1e-10)


def test_no_direction_below_five_seeds_however_small_p():
  a, b = [1.0, 1.001, 0.999, 1.0], [2.0, 2.001, 1.999, 2.0]
  c = stats.compare(a, b, paired=True)
  assert c['p'] < 1e-6 and c['verdict'] == 'no verdict'
  assert stats.verdict(c, 'A lower', 'B lower') == (
      'no verdict: 4 seeds (a verdict needs 5)')
  five = stats.compare(a + [1.0], b + [2.0], paired=True)
  assert five['verdict'] == 'a lower'
  assert stats.verdict(five, 'A lower', 'B lower').startswith('A lower (p < ')


def test_verdict_words_name_direction_test_n_and_p():
  a = [1.0, 1.1, 0.9, 1.05, 0.95]
  c = stats.compare(a, [x + 0.15 for x in a[::-1]], paired=False)
  assert c['verdict'] == 'a lower'
  text = stats.verdict(c, 'A lower', 'B lower')
  assert text.startswith('A lower (p = ') and text.endswith(', Welch t, 5 seeds)')
  noise = stats.compare(a, a[::-1], paired=False)
  assert stats.verdict(noise, 'A lower', 'B lower') == (
      'within noise (p = 1.00, Welch t, 5 seeds)')
  assert stats.verdict(stats.compare([1.0], [2.0], paired=True), 'x', 'y') == (
      'no verdict: 1 seed')


def test_false_positive_rate_under_the_null_is_alpha():
  """2,000 comparisons of equal distributions: about 5% called (a rule that
  called 2 standard errors at n = 3 would call ~18%)."""
  rng = np.random.default_rng(1)
  draws = rng.normal(size=(2000, 2, 5))
  for paired in (True, False):
    called = sum(stats.compare(x, y, paired=paired)['verdict'] != 'within noise'
                 for x, y in draws)
    assert 0.035 < called / 2000 < 0.065, (paired, called)


def test_reaches_target_is_a_one_sided_t_test():
  values = [3.27, 3.275, 3.272, 3.268, 3.279]
  r = stats.reaches_target(values, 3.28)
  n, mean, std = 5, np.mean(values), np.std(values, ddof=1)
  z = scipy_stats.t.ppf(0.95, n - 1)
  assert r['margin'] == pytest.approx((3.28 - mean) * math.sqrt(n) - z * std)
  ref = scipy_stats.ttest_1samp(values, 3.28, alternative='less')
  assert r['p'] == pytest.approx(ref.pvalue, rel=1e-10)
  assert r['accepted'] == (ref.pvalue < 0.05) == True  # noqa: E712
  # Mean below the target but too noisy: refused.
  noisy = stats.reaches_target([3.20, 3.35, 3.22, 3.33, 3.25], 3.28)
  assert noisy['mean'] < 3.28 and noisy['verdict'] == 'does not reach'
  assert stats.reaches_target(values[:4], 3.28)['verdict'] == 'no verdict'


def test_ratio_interval_covers_the_true_speedup():
  rng = np.random.default_rng(2)
  covered = 0
  for _ in range(400):
    base = rng.lognormal(np.log(100), 0.1, size=6)
    fast = rng.lognormal(np.log(50), 0.1, size=6)
    r = stats.ratio_interval(base, fast, paired=False)
    covered += r['low'] <= 2.0 <= r['high']
  assert 0.92 <= covered / 400 <= 0.98


def test_holm_adjustment_and_family_verdicts():
  assert stats.holm([0.01, 0.04, 0.03, None]) == [0.03, 0.06, 0.06, None]
  base = [1.0, 1.1, 0.9, 1.05, 0.95]
  strong = stats.compare(base, [x + 1 for x in base], paired=True)
  weak = stats.compare([1.0, 1.2, 0.8, 1.1, 0.9], [1.1, 1.25, 0.95, 1.1, 1.0],
                       paired=True)
  assert weak['verdict'] == 'a lower' and 0.02 < weak['p'] < 0.05
  fam = stats.adjusted([strong, weak, weak])
  assert fam[0]['verdict'] == 'a lower'
  assert [f['verdict'] for f in fam[1:]] == ['within noise'] * 2
  assert fam[1]['p_raw'] == weak['p'] and fam[1]['test'] == 'paired t, Holm'


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match='non-finite'):
    stats.compare([1.0, float('nan')], [1.0, 2.0], paired=True)
  with pytest.raises(ValueError, match='one value per seed'):
    stats.compare([1.0, 2.0], [1.0], paired=True)
  with pytest.raises(ValueError, match='empty'):
    stats.compare([], [1.0], paired=False)
