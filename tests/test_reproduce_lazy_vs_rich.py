"""The lazy-vs-rich reproduction at smoke size, from a fresh run, and the
library's centered model it rests on (``model.antisymmetric_init``)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.results import lazy_vs_rich as reading
from configs import lazy_rich
from dynamics import config_lib
from dynamics.models import MLP, Knobs
from experiments.reproductions import lazy_vs_rich as m
from reproductions import smoke_fixture

record = smoke_fixture('lazy_vs_rich')


def test_kernel_and_parameters_move_less_as_alpha_grows(record):
  a = record[0]['numbers']['alpha']
  assert a['alphas'] == [0.1, 10.0]
  dist = [s['mean'] for s in a['kernel_distance']]
  change = [s['mean'] for s in a['param_change']]
  # alpha 0.1 -> 10: lazy theory says 1/alpha^2 = 1e4 for the distance and
  # 1/alpha = 100 for the parameters; assert at least 10x each.
  assert dist[0] >= 10 * dist[1], dist
  assert change[0] >= 10 * change[1], change
  gain = [s['mean'] for s in a['alignment_gain']]
  assert gain[0] > 0.05 and abs(gain[1]) < gain[0] / 10, gain
  # Both fit the teacher: the eval loss falls below half its value at init
  # (the output is 0 at init, so the initial loss is E[y^2] / 2 ~ 0.24).
  assert all(s['mean'] < 0.12 for s in a['eval_loss'])
  assert all(reading.claims(record[0]['numbers']).values())


def test_results_file_figure_and_row_come_from_the_numbers(record):
  rec, out = record
  n = rec['numbers']
  with open(os.path.join(out, 'lazy_vs_rich.smoke.json')) as f:
    stored = json.load(f)['numbers']
  assert stored == json.loads(json.dumps(n))
  assert reading.readme_row(stored) == reading.readme_row(n)
  assert os.path.getsize(os.path.join(out, reading.FIGURES[0])) > 10_000
  row = reading.readme_row(n)
  assert row.startswith('| ![lazy vs rich](docs/figures/lazy_vs_rich_alpha.png) |')
  d = n['alpha']['kernel_distance']
  assert f"falls from {d[0]['mean']:.1e} to {d[1]['mean']:.1e}" in row


def test_width_claims_read_each_parametrization():
  """The width claims (full size only) flip with the numbers (no training)."""
  stats = lambda values: [{'mean': v, 'std': 0.0, 'n': 3} for v in values]
  alpha = {k: stats([1.0, 0.01]) for k in m.METRICS}
  alpha['alignment_gain'] = stats([0.1, 0.001])
  # Keys in the JSON's sorted order; claims come in PARAMETRIZATIONS order.
  numbers = {'alpha': {'alphas': [0.1, 10.0], **alpha}, 'width': {
      'ntk': {'kernel_distance': stats([1e-2, 2e-3])},
      'standard': {'kernel_distance': stats([1e-2, 1e-6])}}}
  assert list(reading.claims(numbers).values()) == [True, True, True, True, False]
  numbers['alpha']['param_change'] = stats([1.0, 1.0])
  assert list(reading.claims(numbers).values()) == [True, False, True, True, False]


@pytest.mark.parametrize('parametrization', ['standard', 'ntk'])
def test_antisymmetric_init_starts_at_zero_output_then_trains(parametrization):
  model = MLP(hidden_sizes=(8, 6), num_outputs=2, output_scale=30.0,
              antisymmetric_init=True, knobs=Knobs(parametrization=parametrization))
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  kernel, head = params['dense_1']['kernel'], params['head']['kernel']
  # Units j and j + 3 of the last hidden layer are twins; their readouts are
  # opposite, so their contributions cancel: f(x; theta_0) = 0 for any alpha.
  np.testing.assert_array_equal(kernel[:, 3:], kernel[:, :3])
  np.testing.assert_array_equal(head[3:], -head[:3])
  np.testing.assert_allclose(model.apply({'params': params}, x), 0.0, atol=1e-5)
  # Not a zero network: the first half is the usual init, and a step moves it.
  assert float(jnp.std(head[:3])) > 0.1
  moved = jax.tree.map(lambda p: p + 0.1, params)
  assert float(jnp.abs(model.apply({'params': moved}, x)).max()) > 0.1


def test_antisymmetric_init_needs_an_mlp_with_an_even_last_width():
  c = lazy_rich.get_config('width=63')
  with pytest.raises(config_lib.ConfigError, match='model.antisymmetric_init'):
    config_lib.validate(c)
  config_lib.validate(lazy_rich.get_config('width=64,ntk'))


def test_width_claims_hold_in_a_fresh_smoke_run(record):
  """The width sweep runs at smoke size too (widths 16 and 1024 at alpha =
  1): in both parametrizations the kernel moves far less at the larger
  width, so each width claim is read from a fresh run, not only from the
  committed JSON."""
  n = record[0]['numbers']
  assert set(n['width']) == {'standard', 'ntk'}
  for p, sweep in n['width'].items():
    assert sweep['widths'] == [16, 1024] and sweep['alpha'] == 1.0
    d = [s['mean'] for s in sweep['kernel_distance']]
    assert d[0] >= 100 * d[1], (p, d)
    # Both widths fit the teacher (eval loss under half its ~0.24 at init).
    assert all(s['mean'] < 0.12 for s in sweep['eval_loss']), p
  found = reading.claims(n)
  width_claims = [k for k in found if 'width' in k]
  assert len(width_claims) == 2 and all(found[k] for k in width_claims)
