"""The LR-sensitivity sweep at smoke size: the statistic is Wortsman et al.'s,
a blown-up rate is capped at the loss at init, the row comes from the JSON."""

import json
import math
import os

import numpy as np
import pytest

from analysis.results import lr_sensitivity as reading
from experiments.reproductions import lr_sensitivity as m
from reproductions import smoke_fixture

record = smoke_fixture('lr_sensitivity')


def test_smoke_sweep_finds_the_basin_and_caps_the_blow_up(record):
  rec, out = record
  n = rec['numbers']
  loss0 = n['setup']['loss_at_init']
  assert loss0 == pytest.approx(math.log(32))
  assert n['learning_rates'] == [3e-3, 3e-2, 30.0]
  for v in reading.VARIANTS:
    s = n['summary'][v]
    # 30 blows up (non-finite or above log V): capped at the loss at init.
    assert s['loss']['30.0']['values'] == [loss0], v
    # A sane rate learns: well under the loss at init, every seed.
    assert max(s['loss']['0.03']['values']) < loss0 - 0.4, v
    assert s['best_rate'] in (3e-3, 3e-2)
    # The statistic, by hand from the recorded losses.
    losses = [min(loss0, x if x is not None else loss0)
              for (x,) in (n['sweep'][v][k]['eval_loss']
                           for k in ('0.003', '0.03', '30.0'))]
    assert s['sensitivity']['values'] == [
        pytest.approx(np.mean(losses) - min(losses), abs=1e-12)]
    assert s['sensitivity']['values'][0] > (loss0 - min(losses)) / 3 - 1e-9
  assert reading.claims(n)['largest_rate_worse_than_best']
  with open(os.path.join(out, 'lr_sensitivity.smoke.json')) as f:
    assert json.load(f)['numbers']['summary'] == json.loads(json.dumps(n['summary']))
  row = reading.readme_row(n)
  assert row.startswith('| ![LR sensitivity](docs/figures/lr_sensitivity.png) |')
  assert reading.conclusion(n) in row
  assert os.path.getsize(os.path.join(out, 'lr_sensitivity.png')) > 10_000


def test_sensitivity_matches_equation_1():
  # Wortsman et al., Eq. 1: E_eta[min(l(eta), l0)] - min_eta l(eta).
  assert m.sensitivity([2.0, 2.0, 2.0], 4.0) == 0.0
  assert m.sensitivity([2.0, 3.0, 9.0], 4.0) == pytest.approx((2 + 3 + 4) / 3 - 2)
  assert m.sensitivity([2.0, float('nan'), float('inf')], 4.0) == pytest.approx(
      (2 + 4 + 4) / 3 - 2)
  # A flatter curve is less sensitive.
  assert m.sensitivity([2.1, 2.0, 2.2], 4.0) < m.sensitivity([3.0, 2.0, 3.5], 4.0)
