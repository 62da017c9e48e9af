"""The Git Re-Basin reproduction at smoke size: weight matching lowers the
barrier between two independently trained MLPs, the row comes from the JSON;
the committed full-size JSON holds the width claim too."""

import json
import os

import pytest

from analysis import landscape, results
from analysis.results import rebasin as reading
from reproductions import smoke_fixture

record = smoke_fixture('rebasin')


def test_smoke_matching_lowers_the_barrier(record):
  rec, out = record
  n = rec['numbers']
  assert n['widths'] == [8, 32] and n['alphas'][0] == 0 and n['alphas'][-1] == 1
  for w in n['widths']:
    for r in n['per_width'][str(w)]['runs']:
      # The barrier is the one of the recorded curve (Frankle et al.).
      assert r['naive']['train_barrier'] == pytest.approx(
          landscape.barrier(n['alphas'], r['naive']['train_loss']))
      # Aligned B computes B's function: the endpoints do not move.
      assert r['matched']['train_loss'][-1] == pytest.approx(
          r['naive']['train_loss'][-1], rel=1e-5)
  # At width 32 the naive barrier is large and matching removes most of it.
  wide = n['per_width']['32']
  assert wide['naive']['mean'] > 0.3
  assert wide['matched']['mean'] < 0.5 * wide['naive']['mean']
  assert reading.claims(n)['matching_lowers_the_barrier']
  with open(os.path.join(out, 'rebasin.smoke.json')) as f:
    assert json.load(f)['numbers']['per_width']['32']['matched'] == (
        json.loads(json.dumps(wide['matched'])))
  assert reading.readme_row(n).startswith(
      '| ![Git Re-Basin](docs/figures/rebasin.png) |')
  assert os.path.getsize(os.path.join(out, 'rebasin.png')) > 10_000


def test_committed_full_result_holds_both_claims():
  path = results.result_path('rebasin', 'full')
  with open(path) as f:
    numbers = json.load(f)['numbers']
  assert all(reading.claims(numbers).values()), reading.claims(numbers)
