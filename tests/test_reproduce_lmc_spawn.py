"""The instability-analysis reproduction at smoke size: children spawned at
initialization end on either side of a barrier, children spawned after early
training do not; with one data order for both children the claim fails (the
children coincide); the committed full-size JSON holds the claims too."""

import json
import os

import numpy as np
import pytest

from analysis import landscape, results
from analysis.results import lmc_spawn as reading
from experiments.reproductions import lmc_spawn
from reproductions import smoke_fixture

record = smoke_fixture('lmc_spawn')


def test_smoke_barrier_falls_after_early_training(record):
  rec, out = record
  n = rec['numbers']
  assert n['spawn_steps'] == [0, 40] and n['alphas'][0] == 0
  r = n['runs'][0]
  assert r['child_seeds'] == [1000, 1001]
  for k in n['spawn_steps']:
    p = r['per_k'][str(k)]
    # The barrier is the one of the recorded curve (Frankle et al.).
    assert p['train_barrier'] == pytest.approx(
        landscape.barrier(n['alphas'], p['train_loss']))
  init, late = (r['per_k'][str(k)]['train_barrier'] for k in (0, 40))
  assert init > 1e-3 and late < 0.1 * init, (init, late)
  assert all(reading.claims(n).values()), reading.claims(n)
  with open(os.path.join(out, 'lmc_spawn.smoke.json')) as f:
    assert json.load(f)['numbers']['per_k'] == json.loads(
        json.dumps(n['per_k']))
  assert reading.readme_row(n).startswith(
      '| ![Instability analysis](docs/figures/lmc_spawn.png) |')
  assert os.path.getsize(os.path.join(out, 'lmc_spawn.png')) > 10_000


def test_one_data_order_breaks_the_claim(monkeypatch):
  """Both children on the parent's own data order: they coincide, the
  barrier is 0 at every k, and "large at initialization" fails."""
  monkeypatch.setitem(lmc_spawn.STEPS, 'smoke', 60)
  monkeypatch.setitem(lmc_spawn.SPAWN_STEPS, 'smoke', (0, 20))
  monkeypatch.setattr(lmc_spawn, 'child_seeds', lambda s: (s, s))
  n = lmc_spawn.run('smoke', (0,), log=lambda *_: None)
  for k in ('0', '20'):
    assert n['per_k'][k]['train_barrier']['values'] == [0.0]
    assert np.ptp(n['runs'][0]['per_k'][k]['train_loss']) < 1e-6
  assert not reading.claims(n)['barrier_near_zero_after_early_training']
  assert not reading.claims(n)['barrier_falls_after_early_training']


def test_committed_full_result_holds_the_claims():
  path = results.result_path('lmc_spawn', 'full')
  with open(path) as f:
    numbers = json.load(f)['numbers']
  assert all(reading.claims(numbers).values()), reading.claims(numbers)
