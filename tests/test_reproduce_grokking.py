"""Grokking at smoke size: weight decay memorizes before it generalizes,
⊥Grad starts generalizing first; the row comes from the JSON."""

import json
import os

from analysis.results import grokking as reading
from experiments.reproductions import grokking as m
from reproductions import smoke_fixture

record = smoke_fixture('grokking')


def test_weight_decay_memorizes_first_and_orthograd_generalizes_first(record):
  rec, out = record
  n = rec['numbers']
  assert n['setup']['num_steps'] == 600 and n['setup']['eval_every'] == 25
  (wd,), (og,) = n['curves']['weight decay'], n['curves']['⊥Grad']
  # Weight decay: every training pair right within 100 steps, while the
  # held-out pairs stay near chance (1/31) for hundreds of steps.
  assert wd['memorized_at'] <= 100
  at = wd['steps'].index(wd['memorized_at'])
  assert wd['test_accuracy'][at] < 0.1
  assert max(wd['test_accuracy'][:wd['steps'].index(300)]) < 0.1
  # ⊥Grad (no weight decay) fits the training set as fast and is already
  # past 50% test accuracy when the run ends; weight decay is not.
  assert og['memorized_at'] <= 100
  assert og['test_reaches']['0.5'] is not None
  assert wd['test_reaches']['0.5'] is None
  assert og['test_accuracy'][-1] > wd['test_accuracy'][-1] + 0.3
  assert reading.claims(n) == {'weight_decay_memorizes_first': True,
                         'orthograd_reaches_half_earlier': True}
  with open(os.path.join(out, 'grokking.smoke.json')) as f:
    assert json.load(f)['numbers']['summary'] == json.loads(json.dumps(n['summary']))
  row = reading.readme_row(n)
  assert reading.describe(n, '⊥Grad') in row and reading.describe(n, 'weight decay') in row
  assert os.path.getsize(os.path.join(out, 'grokking.png')) > 10_000


def test_first_step_and_the_descriptions():
  assert m.first_step([25, 50, 75], [0.2, 0.5, 0.9], 0.5) == 50
  assert m.first_step([25, 50], [0.2, 0.4], 0.5) is None
  numbers = {'setup': {'targets': [0.5, 0.9], 'num_steps': 100},
             'summary': {'v': {
                 'seeds': 2, 'reached': 1, 'delay': None,
                 'test_reaches': {'0.5': {'reached': 2, 'step': {
                     'mean': 40.0, 'std': 10.0}},
                                  '0.9': {'reached': 1, 'step': {
                                      'mean': 90.0, 'std': 0.0}}},
                 'final_test_accuracy': {'mean': 0.9, 'std': 0.05}}}}
  assert reading.describe(numbers, 'v') == (
      'test accuracy 50% at step 40 ± 10, 90% at step 90 ± 0 in 1/2 seeds '
      '(final test accuracy 0.90 ± 0.05)')
