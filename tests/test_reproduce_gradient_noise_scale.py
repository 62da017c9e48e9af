"""The gradient-noise-scale reproduction at smoke size: B_simple grows as the
loss falls, the steps fall with the batch while the examples grow, and the
fitted critical batch is within a factor 10 of B_simple; the committed
full-size JSON holds every claim, B_crit growing as the target falls too."""

import json
import math
import os

import pytest

from analysis import results
from analysis.results import gradient_noise_scale as reading
from experiments.reproductions import gradient_noise_scale as gns
from reproductions import smoke_fixture

record = smoke_fixture('gradient_noise_scale')


def test_fit_and_steps_exact():
  # S = S_min (1 + B_crit / B) is linear in 1/B: the fit is exact.
  b = [8, 32, 128]
  fit = gns.fit_critical_batch(b, [20 * (1 + 40 / x) for x in b] + [])
  assert fit['s_min'] == pytest.approx(20) and fit['b_crit'] == pytest.approx(40)
  assert math.isnan(gns.fit_critical_batch(b, [5, math.inf, math.inf])['b_crit'])
  assert gns.steps_to_target([0, 2, 4], [3.0, 2.5, 2.0], 2.25) == 3.0
  assert gns.steps_to_target([0, 2, 4], [3.0, 2.5, 2.4], 2.0) == math.inf


def test_smoke_claims(record):
  rec, out = record
  n = rec['numbers']
  r = n['per_seed'][0]
  assert [a['step'] for a in r['along']] == list(n['probe_steps'])
  for a in r['along']:
    assert a['b_simple'] > 0 and 0 < a['b_simple_stderr'] < a['b_simple']
  # Each recorded crossing is the one of its recorded curve.
  for b in n['batches']:
    best = r['targets'][0]['best'][str(b)]
    curve = r['curves'][str(b)][repr(best['rate'])]
    assert best['steps'] == pytest.approx(gns.steps_to_target(
        list(range(0, n['branch'][str(b)]['steps'] + 1,
                   n['branch'][str(b)]['every'])),
        curve, r['targets'][0]['target']))
  c = reading.claims(n)
  assert all(c.values()), c
  assert reading.readme_row(n).startswith(
      '| ![Gradient noise scale](docs/figures/gradient_noise_scale.png) |')
  assert 'no verdict' in reading.readme_row(n)  # One seed: no direction.
  with open(os.path.join(out, 'gradient_noise_scale.smoke.json')) as f:
    assert json.load(f)['numbers']['b_simple_late'] == json.loads(
        json.dumps(n['b_simple_late']))
  assert os.path.getsize(os.path.join(out, 'gradient_noise_scale.png')) > 10_000


def test_claims_fail_when_broken(record):
  n = json.loads(json.dumps(record[0]['numbers']))
  # B_simple that falls as the loss falls breaks the first claim.
  n['b_simple_late'], n['b_simple_early'] = (n['b_simple_early'],
                                             n['b_simple_late'])
  assert not reading.claims(n)['b_simple_grows_as_loss_falls']
  # Steps that do not fall with the batch (perfect non-scaling) break the bend.
  for t in n['per_seed'][0]['targets']:
    for v in t['best'].values():
      v['steps'] = 10.0
  assert not reading.claims(n)['steps_examples_trade_off_bends']


def test_committed_full_result_holds_every_claim():
  path = results.result_path('gradient_noise_scale', 'full')
  with open(path) as f:
    numbers = json.load(f)['numbers']
  c = reading.claims(numbers)
  assert len(c) == 4 and all(c.values()), c
  # A B_crit that falls with the target loss breaks the fourth claim.
  numbers['b_crit_trend']['verdict'] = 'a lower'
  assert not reading.claims(numbers)['b_crit_grows_as_target_falls']
