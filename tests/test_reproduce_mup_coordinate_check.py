"""muP's coordinate check at smoke size: every layer flat under muP (the
readout included), the hidden layer and readout growing under the standard
parametrization; the row comes from the JSON."""

import json
import os

import pytest

from analysis.results import mup_coordinate_check as reading
from experiments.reproductions import mup_coordinate_check as m
from reproductions import smoke_fixture

record = smoke_fixture('mup_coordinate_check', seeds=(0, 1))


def test_mup_is_flat_and_the_standard_parametrization_grows(record):
  rec, out = record
  n = rec['numbers']
  assert n['widths'] == [256, 4096] and n['steps'] == [1, 2, 3]
  for layer in reading.LAYERS:
    mup = [v for t, v in zip(n['steps'], n['slopes']['mup'][layer])
           if t >= reading.MUP_FROM_STEP]
    assert all(abs(v) < 0.1 for v in mup), (layer, n['slopes']['mup'])
  for layer in ('dense_1', 'head'):  # ~ width: slope near 1.
    assert all(v > 0.5 for v in n['slopes']['standard'][layer]), (
        layer, n['slopes']['standard'])
  # The input layer's fan-in is fixed: flat under both.
  assert all(abs(v) < 0.15 for v in n['slopes']['standard']['dense_0'])
  assert all(reading.claims(n).values()), reading.claims(n)
  with open(os.path.join(out, 'mup_coordinate_check.smoke.json')) as f:
    assert json.load(f)['numbers']['slopes'] == json.loads(json.dumps(n['slopes']))
  row = reading.readme_row(n)
  assert f"readout {reading.worst(n, 'mup', 'head', reading.MUP_FROM_STEP):+.3f}" in row
  assert row.endswith('Reproduced. |')
  assert os.path.getsize(os.path.join(out, 'mup_coordinate_check.png')) > 10_000


def test_the_zero_readout_passes_no_gradient_down_on_the_first_update(record):
  n = record[0]['numbers']
  for width_sizes in n['sizes']['mup']:
    first = width_sizes[0]  # t = 1: dense_0, dense_1, head
    assert first[0] == 0.0 and first[1] == 0.0 and first[2] > 0.0
    assert all(v > 0.0 for v in width_sizes[1])  # t = 2: everything moves.
  assert all(v > 0.0 for w in n['sizes']['standard'] for v in w[0])
  assert n['slopes']['mup']['dense_0'][0] is None


def test_slopes_fit_log_size_against_log_width():
  assert m.slopes([64, 256, 1024], [[1.0, 0.0], [4.0, 1.0], [16.0, 2.0]]) == [
      pytest.approx(1.0), None]
  assert m.slopes([10, 1000], [[3.0], [3.0]]) == [pytest.approx(0.0)]
