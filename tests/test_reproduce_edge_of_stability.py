"""The edge-of-stability claims, asserted on a fresh smoke-size reproduction.

One seed, 600 steps of the 5,313-parameter MLP of `configs/eos.py`: GD at
eta = 0.2 and 0.3, unnormalized SAM at eta = 0.2 with rho = 0.02 and 0.05,
SGD with batch 8 at eta = 0.2 (see `SIZES['smoke']`), through
`experiments.reproduce.reproduce` into a scratch directory.
"""

import json

import pytest

from analysis.results import edge_of_stability as reading
from experiments.reproductions import edge_of_stability as eos
from reproductions import smoke_fixture

record = smoke_fixture('edge_of_stability')


def test_gd_sharpness_rises_then_hovers_at_two_over_eta(record):
  numbers = record[0]['numbers']
  for rate in (0.2, 0.3):
    gd = numbers['gd'][f'{rate:g}']
    (initial,), (mean,) = gd['initial']['values'], gd['last_third']['values']
    assert initial < 0.8 * 2 / rate, (rate, initial)  # starts below the edge
    assert abs(mean * rate / 2 - 1) <= reading.GD_TOLERANCE, (rate, mean)


def test_sam_sharpness_matches_the_unnormalized_prediction(record):
  numbers = record[0]['numbers']
  (gd,) = numbers['gd']['0.2']['last_third']['values']
  for rho in (0.02, 0.05):
    r = numbers['sam']['rhos'][f'{rho:g}']
    predicted = r['predicted']  # the root of eta*l*(1 + rho*l) = 2
    assert 0.2 * predicted * (1 + rho * predicted) == pytest.approx(2, abs=1e-12)
    (measured,) = r['last_third']['values']
    assert abs(measured / predicted - 1) <= reading.SAM_TOLERANCE, (rho, measured)
    assert measured < 0.95 * gd  # and settles clearly below GD's 2/eta


def test_small_batch_sgd_ends_with_a_smaller_hessian_trace(record):
  sgd = record[0]['numbers']['sgd']
  (ratio,) = sgd['trace_ratio']['values']
  assert ratio <= reading.SGD_TRACE_RATIO, sgd['trace']
  # Its top eigenvalue stays far below 2/eta as well.
  (sharpness,) = sgd['sharpness']['values']
  assert sharpness < 0.8 * sgd['two_over_eta']


def test_every_claim_holds_and_the_outputs_are_written(record):
  rec, out = record
  assert all(reading.claims(rec['numbers']).values()), reading.claims(rec['numbers'])
  with open(out / 'edge_of_stability.smoke.json') as f:
    assert json.load(f)['numbers']['gd'] == json.loads(json.dumps(
        rec['numbers']['gd']))
  assert sorted(rec['configs']) == sorted(eos.configs('smoke'))
  assert rec['configs']['sam eta=0.2 rho=0.05']['optimizer']['sam'][
      'normalize'] is False
  for name in reading.FIGURES:
    assert (out / name).stat().st_size > 10_000, name
  rows = reading.readme_row(rec['numbers']).split('\n')
  assert [r.split(')')[0].split('/')[-1] for r in rows] == list(reading.FIGURES)
  assert all(r.startswith('| ![') and r.endswith(' |') for r in rows)
