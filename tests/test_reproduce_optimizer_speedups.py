"""The optimizer-speedups reproduction at smoke size: Wen et al.'s claim
(tuned AdamW is much closer to newer optimizers than untuned AdamW says)
holds on the fresh numbers, and the row and figure come from the JSON."""

import json
import os

import numpy as np

from analysis.results import optimizer_speedups as reading
from reproductions import smoke_fixture

record = smoke_fixture('optimizer_speedups', seeds=(0, 1, 2))


def test_the_claim_holds_at_smoke_size(record):
  rec, out = record
  n = rec['numbers']
  c = n['comparison']
  assert n['tune_seed'] == 0 and n['eval_seeds'] == [1, 2]
  assert {'adamw', 'soap', 'adamw (untuned)'} <= set(c['optimizers'])
  # The search moved AdamW off the untuned rate, to a better final loss.
  best = c['tuning']['adamw']['best']
  assert best['learning_rate'] != n['setup']['untuned_learning_rate']
  assert (c['optimizers']['adamw']['final']['mean']
          < c['optimizers']['adamw (untuned)']['final']['mean'])
  claims = reading.claims(n)
  assert claims and all(claims.values()), claims
  # The speedups are the per-seed ratios' geometric means.
  s = c['optimizers']['soap']['speedup_vs_untuned_adamw']
  assert abs(np.exp(np.mean(np.log(s['per_seed']))) - s['ratio']) < 1e-9
  # Two evaluation seeds: numbers, no verdict.
  assert n['log_speedup_untuned_vs_tuned']['soap']['verdict'] == 'no verdict'
  with open(os.path.join(out, 'optimizer_speedups.smoke.json')) as f:
    assert json.load(f)['numbers']['setup'] == n['setup']
  row = reading.readme_row(n)
  assert row.startswith('| ![optimizer speedups]') and reading.conclusion(n) in row
  assert os.path.getsize(os.path.join(out, 'optimizer_speedups.png')) > 10_000
