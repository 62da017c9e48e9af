"""The river-valley reproduction at smoke size, from a fresh run: the WSD
signature, WSM merges against the raw checkpoint, and the JSON, figures and
README rows made from the numbers."""

import json
import os

import numpy as np
from scipy import stats as scipy_stats
import pytest

from analysis.results import river_valley as reading
from experiments.reproductions import river_valley as m
from reproductions import smoke_fixture

record = smoke_fixture('river_valley')


def _claim(numbers, start):
  return next(ok for claim, ok in reading.claims(numbers).items()
              if claim.startswith(start))


def test_wsd_decay_drops_the_loss_more_than_the_constant_rate_does(record):
  n = record[0]['numbers']
  assert list(n['signature']) == ['200', '400']
  for budget, sig in n['signature'].items():
    decay, stable = sig['a']['mean'], sig['b']['mean']
    # In nats, over the same steps from the same state: the decay's drop is
    # larger than the constant rate's by a clear margin.
    assert decay > stable + 0.02, (budget, decay, stable)
    # Measured where it should be: from the constant run at the decay's start
    # to the linear WSD branch / the constant run at the budget.
    const = dict(zip(n['curves']['constant']['steps'],
                     n['curves']['constant']['losses'][0]))
    start, wsd = int(budget) - sig['decay_steps'], n['final']['WSD linear'][budget]
    assert decay == pytest.approx(const[start] - wsd['mean'], abs=2e-6)
    assert stable == pytest.approx(const[start] - const[int(budget)], abs=2e-6)
  # One seed: analysis.stats gives no verdict, so the claim is not made here;
  # test_the_claims_on_the_committed_full_size_json makes it at 5 seeds.
  assert not _claim(n, 'WSD signature')


def test_wsm_merges_beat_the_constant_rate_checkpoint(record):
  n = record[0]['numbers']
  for budget, cmp in n['comparisons']['wsm_vs_constant'].items():
    assert cmp['a_method'].startswith('WSM ')
    assert cmp['difference'] < -0.02, (budget, cmp['difference'])
  assert not _claim(n, 'the best WSM merge beats the constant-rate checkpoint')


def test_the_claims_on_the_committed_full_size_json():
  """At 5 seeds (results/river_valley.json) the WSD signature and the WSM
  merges' gain over the constant-rate checkpoint hold by paired t-tests
  (analysis.stats) at every budget, and the README rows word them so."""
  from analysis import results, stats  # pylint: disable=g-import-not-at-top
  n = results.read_result('river_valley')['numbers']
  for budget, sig in n['signature'].items():
    c = stats.compare(sig['a']['values'], sig['b']['values'], paired=True)
    assert c['n'] >= 5 and c['p'] < 0.05 and c['difference'] > 0, budget
  for budget, cmp in n['comparisons']['wsm_vs_constant'].items():
    c = stats.compare(cmp['a']['values'], cmp['b']['values'], paired=True)
    assert c['n'] >= 5 and c['p'] < 0.05 and c['difference'] < 0, budget
  assert _claim(n, 'WSD signature')
  assert _claim(n, 'the best WSM merge beats the constant-rate checkpoint')
  # The findings the rows state against the papers, each by scipy's paired
  # t-test here: cosine beats the best WSD branch at 1800; WSD-S ends above
  # the linear WSD branch at 1200 and 1800; the best WSM merge ends above
  # the best decay at every budget -- so those claims do not hold.
  for key, budgets in (('wsd_vs_cosine', ['1800']),
                       ('wsds_vs_wsd', ['1200', '1800']),
                       ('wsm_vs_decay', ['600', '1200', '1800'])):
    for b in budgets:
      c = n['comparisons'][key][b]
      t = scipy_stats.ttest_rel(c['a']['values'], c['b']['values'])
      assert t.pvalue < 0.05 and t.statistic > 0, (key, b, t)
  assert not _claim(n, 'the best WSD branch matches or beats cosine')
  assert not _claim(n, 'WSD-S matches or beats the linear WSD branch')
  assert not _claim(n, 'the best WSM merge matches or beats an actual decay')
  rows = reading.readme_row(n).split('\n')
  assert rows[0].count('the decay drops more (p ') == len(n['signature'])
  assert rows[1].split('; best WSM merge minus the best')[0].count(
      'WSM lower (p ') == len(n['signature'])


def test_results_file_figures_and_rows_come_from_the_numbers(record):
  rec, out = record
  n = rec['numbers']
  with open(os.path.join(out, 'river_valley.smoke.json')) as f:
    stored = json.load(f)
  assert stored['seeds'] == [0] and stored['size'] == 'smoke'
  assert stored['numbers']['final'] == json.loads(json.dumps(n['final']))
  for name in reading.FIGURES:
    assert os.path.getsize(os.path.join(out, name)) > 10_000, name
  # The JSON sorts its keys: the rows and claims must not depend on order.
  assert reading.readme_row(stored['numbers']) == reading.readme_row(n)
  assert reading.claims(stored['numbers']) == reading.claims(n)
  rows = reading.readme_row(n).split('\n')
  assert len(rows) == 3 and all(r.startswith('| ![') and r.endswith(' |')
                                for r in rows)
  sig = n['signature']
  assert (f"drops {sig['200']['a']['mean']:.3f}/{sig['400']['a']['mean']:.3f} "
          'nats') in rows[0]
  cmp = n['comparisons']['wsm_vs_constant']['400']
  # One seed at smoke size: the difference is printed, no direction is worded
  # (analysis.stats needs 5 seeds), although the 2-standard-error rule of
  # results.compare (standard error 0) calls it.
  assert cmp['verdict'] == 'a lower'
  assert (f"400: {cmp['difference']:+.4f} ± {cmp['stderr']:.4f} "
          '(no verdict: 1 seed)') in rows[1]
  assert 'WSM lower' not in rows[1]
  law = n['law']
  assert (f"{100 * law['held_out_mean']['mean']:.2f}% ± "
          f"{100 * law['held_out_mean']['std']:.2f}% on average") in rows[2]
  # One fit on two runs predicts the 8 others (3 WSD shapes, 2 cosine runs,
  # WSD-S at the two smoke budgets, less the two it was fitted on).
  assert len(law['held_out']) == len(n['curves']) - 2 == 8
  errors = [law['final_rel_error'][k]['mean'] for k in law['held_out']]
  assert law['held_out_mean']['mean'] == pytest.approx(np.mean(errors))


def test_claims_follow_the_verdicts(monkeypatch):
  """Each claim flips with the comparison it reads (no training)."""
  nats = {'law': [0.010, 0.011, 0.012, 0.010, 0.011],
          'baseline': [0.020, 0.022, 0.021, 0.020, 0.023]}
  monkeypatch.setattr(reading, 'law_in_nats', lambda numbers: nats)
  base = [1.0, 1.1, 0.9, 1.05, 0.95]
  shift = {'a higher': [x + 1 for x in base], 'a lower': [x - 1 for x in base],
           'within noise': [1.02, 1.08, 0.93, 1.0, 0.97]}
  # Stored 2-SE verdicts are ignored: the claims run analysis.stats' t-test
  # on the per-seed values (the 'verdict' key says the opposite here).
  cmp = lambda verdict: {'a': {'values': shift[verdict]},
                         'b': {'values': base}, 'verdict': 'a higher'}
  numbers = {
      'setup': {'budgets': [200, 400]},
      'signature': {'200': cmp('a higher'), '400': cmp('a higher')},
      'comparisons': {
          'wsd_vs_cosine': {'200': cmp('within noise'), '400': cmp('a lower')},
          'wsds_vs_wsd': {'200': cmp('a higher'), '400': cmp('within noise')},
          'wsm_vs_constant': {'200': cmp('a lower'), '400': cmp('a lower')},
          'wsm_vs_decay': {'200': cmp('within noise'), '400': cmp('a higher')}},
      'law': {'held_out_mean': {'mean': 0.009}},
  }
  assert list(reading.claims(numbers).values()) == [True, True, True, True, False,
                                              True, True]
  numbers['signature']['400'] = cmp('within noise')
  numbers['comparisons']['wsds_vs_wsd']['400'] = cmp('a higher')
  numbers['law']['held_out_mean']['mean'] = 0.011
  nats['law'], nats['baseline'] = nats['baseline'], nats['law']
  assert list(reading.claims(numbers).values()) == [False, True, False, True, False,
                                              False, False]
  nats['law'] = nats['law'][:3]  # Three seeds: no verdict, so no claim.
  nats['baseline'] = [0.5, 0.5, 0.5]
  assert not list(reading.claims(numbers).values())[-1]


def test_the_annealing_law_is_measured_in_nats_against_a_trivial_baseline():
  """Item 4 of issue 23, on the committed full-size JSON (the law is fitted
  there; at smoke size its fit has 1 seed and 2 budgets): the error in nats,
  the baseline by hand, and the finding -- the law does not beat the trivial
  baseline (a larger error on every seed; paired t, 5 seeds), worded through
  analysis.stats."""
  from analysis import results, stats  # pylint: disable=g-import-not-at-top
  n = results.read_result('river_valley')['numbers']
  nats = reading.law_in_nats(n)
  curves = n['curves']
  const = curves['constant']
  at = lambda seed, step: const['losses'][seed][const['steps'].index(step)]
  for seed in range(len(n['law']['params'])):
    gain = at(seed, 1800) - curves['wsd-linear-1800']['losses'][seed][-1]
    base, err = [], []
    for key in n['law']['held_out']:
      final, step = curves[key]['losses'][seed][-1], curves[key]['steps'][-1]
      base.append(abs(at(seed, step) - gain - final))
      err.append(n['law']['final_rel_error'][key]['values'][seed] * final)
    assert nats['baseline'][seed] == pytest.approx(np.mean(base), abs=1e-12)
    assert nats['law'][seed] == pytest.approx(np.mean(err), abs=1e-12)
  assert all(l > b for l, b in zip(nats['law'], nats['baseline']))
  claim = [k for k in reading.claims(n) if 'trivial baseline' in k]
  assert claim and not reading.claims(n)[claim[0]]
  row = reading.readme_row(n).split('\n')[2]
  c = stats.compare(nats['law'], nats['baseline'], paired=True)
  assert c['n'] >= 5 and c['p'] < 0.05 and c['difference'] > 0
  assert (f"law minus baseline {nats['comparison']['difference']:+.3f} "
          '(the law does not beat the baseline (p ') in row
  # The error is a large part of the effect it predicts (the point).
  assert np.mean(nats['law']) > 0.5 * np.mean(nats['gain'])


def test_the_smoke_row_reports_the_law_in_nats(record):
  n = record[0]['numbers']
  nats = reading.law_in_nats(n)
  assert all(np.isfinite(nats[k]).all() for k in ('law', 'baseline', 'gain'))
  assert 'In nats (mean over those runs' in reading.readme_row(n)
