"""The training-Jacobian claims, asserted on a fresh smoke-size reproduction.

One seed of `configs/jacobian.py` shrunk to a 64-16-10 MLP (1,210
parameters) trained for 200 steps of batch 32 (see `SIZES['smoke']`), on
digits and on white noise, through `experiments.reproduce.reproduce` into a
scratch directory.
"""

import numpy as np
import pytest

from analysis.results import training_jacobian as reading
from experiments.reproductions import training_jacobian as tj
from reproductions import smoke_fixture

record = smoke_fixture('training_jacobian')


def test_bulk_on_digits_is_at_least_three_times_white_noise(record):
  numbers = record[0]['numbers']
  assert numbers['num_params'] == 64 * 16 + 16 + 16 * 10 + 10
  (digits,) = numbers['digits']['bulk_fraction']['values']
  (noise,) = numbers['white noise']['bulk_fraction']['values']
  assert digits >= reading.BULK_RATIO * noise, (digits, noise)
  # The split is a partition, and the spectrum is the one it counts.
  for d in reading.DATASETS:
    r = numbers[d]
    assert sum(r[k]['mean'] for k in ('bulk_fraction', 'amplified_fraction',
                                      'contracted_fraction')) == pytest.approx(1)
    s = np.asarray(r['singular_values'])
    assert np.mean(np.abs(s - 1) <= tj.BULK_TOL) == pytest.approx(
        r['bulk_fraction']['mean'], abs=2 / s.size)  # 6 significant digits
  # The trivial directions: a constant shift of the head's 10 logits per
  # hidden unit and for the bias (17); on digits also the 16 weights of each
  # pixel that is 0 in every training image. J v = v on all of them.
  noise = numbers['white noise']
  assert noise['trivial_fraction']['mean'] * 1210 == pytest.approx(17)
  dead = numbers['digits']['trivial_fraction']['mean'] * 1210 - 17
  assert dead > 0 and dead % 16 == pytest.approx(0)
  for d in reading.DATASETS:
    assert numbers[d]['trivial_residual']['mean'] < 1e-5


def test_bulk_directions_move_the_outputs_least_and_top_ones_most(record):
  p = record[0]['numbers']['perturbation']
  (bulk,), (random,), (top,) = (p[k]['values'] for k in reading.PERTURBED)
  assert 0 < bulk < random < top, (bulk, random, top)


def test_outputs_are_written(record):
  rec, out = record
  assert (out / 'training_jacobian.smoke.json').exists()
  assert sorted(rec['configs']) == sorted(reading.DATASETS)
  assert rec['configs']['white noise']['data']['white_noise'] is True
  for name in reading.FIGURES:
    assert (out / name).stat().st_size > 10_000, name
  row = reading.readme_row(rec['numbers'])
  assert row.startswith('| ![training Jacobian](docs/figures/'
                        'training_jacobian_spectrum.png) | ') and '\n' not in row
