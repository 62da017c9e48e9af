"""The WSD landscape slices at smoke size: the decayed branch and the WSM
merge lie below the constant-rate checkpoint with no barrier between, and the
loss rises past the decayed point; a branch that does not decay breaks the
claim; the committed full-size JSON holds the claims too."""

import json
import os

import numpy as np
import pytest

from analysis import landscape, results
from analysis.results import river_valley_slice as reading
from experiments.reproductions import river_valley_slice as rvs
from reproductions import smoke_fixture

record = smoke_fixture('river_valley_slice')


def test_smoke_decay_goes_down_the_valley(record):
  rec, out = record
  n = rec['numbers']
  r = n['runs'][0]
  line = r['lines']['constant->decayed']
  # The barrier is the one of the recorded curve; the endpoints are the
  # recorded losses.
  assert line['barrier'] == pytest.approx(
      landscape.barrier(n['alphas'], line['loss']))
  assert line['loss'][n['alphas'].index(0.0)] == pytest.approx(
      r['loss']['constant'], abs=1e-6)
  # The plane holds the three points: constant at the origin, decayed on the
  # first axis at the distance between them.
  c = np.asarray(r['plane']['coords'])
  assert c[0].tolist() == [0, 0] and c[1, 1] == 0
  assert c[1, 0] == pytest.approx(r['distances']['constant->decayed'])
  z = np.asarray(r['plane']['loss'])
  assert z.shape == (rvs.GRID['smoke'],) * 2
  assert r['plane']['grid_min'] == pytest.approx(z.min())
  assert all(reading.claims(n).values()), reading.claims(n)
  assert reading.readme_row(n).startswith(
      '| ![river-valley slice](docs/figures/river_valley_slice.png) |')
  with open(os.path.join(out, 'river_valley_slice.smoke.json')) as f:
    assert json.load(f)['numbers']['loss'] == json.loads(json.dumps(n['loss']))
  assert os.path.getsize(os.path.join(out, 'river_valley_slice.png')) > 10_000


def test_a_branch_without_decay_breaks_the_claim(monkeypatch):
  """A branch that "decays" to the peak rate continues the constant run: it
  gains nothing, and the claim fails."""
  branch = rvs.branch_config

  def no_decay(size, seed, parent):
    c = branch(size, seed, parent)
    c.schedule.final_value = c.optimizer.learning_rate
    return c

  monkeypatch.setattr(rvs, 'branch_config', no_decay)
  monkeypatch.setitem(rvs.STEPS, 'smoke', 40)
  monkeypatch.setitem(rvs.DECAY, 'smoke', 10)
  monkeypatch.setitem(rvs.GRID, 'smoke', 2)
  n = rvs.run('smoke', (0,), log=lambda *_: None)
  l = n['loss']
  assert abs(l['decayed']['mean'] - l['constant']['mean']) < 1e-4
  assert not reading.claims(n)['no_barrier_down_to_the_decayed_point']


def test_committed_full_result_holds_the_claims():
  path = results.result_path('river_valley_slice', 'full')
  with open(path) as f:
    numbers = json.load(f)['numbers']
  assert all(reading.claims(numbers).values()), reading.claims(numbers)
