"""Tests for analysis/annealing_law.py (Tissue et al.'s loss law)."""

import jax
import matplotlib
import numpy as np
import pytest

from analysis import annealing_law as law
from dynamics import schedules

matplotlib.use('Agg')
jax.config.update('jax_numpy_rank_promotion', 'raise')

TRUE = law.LawParams(L0=2.0, A=0.4, alpha=0.45, C=0.3)
STEPS = 1200


def _curve(name, schedule, every=10):
  lrs = law.schedule_values(schedule, STEPS)
  steps = np.arange(every, STEPS + 1, every)
  return law.Curve(steps, law.predict(TRUE, lrs, steps), lrs, name)


@pytest.fixture(scope='module')
def curves():
  return {
      'constant': _curve('constant', schedules.constant(1e-2, 50)),
      'wsd': _curve('wsd', schedules.wsd(1e-2, STEPS, 50, 0.2)),
      'cosine': _curve('cosine', schedules.warmup_cosine(1e-2, STEPS, 50)),
      'wsd_s': _curve('wsd_s', schedules.wsd_s(1e-2, (400, 800, 1200), 50, 0.2,
                                               '1-sqrt')),
  }


def test_areas_golden_values():
  s1, s2 = law.annealing_areas(np.array([1.0, 1.0, 0.5, 0.5, 0.0]), lam=0.5)
  np.testing.assert_allclose(s1, [1, 2, 2.5, 3, 3])
  # m = [0, 0, .5, .25, .125 + .5]
  np.testing.assert_allclose(s2, [0, 0, 0.5, 0.75, 1.375])
  # The initial warmup is not annealing; a later rise counts negatively.
  _, s2 = law.annealing_areas(np.array([0.25, 0.5, 1.0, 1.0, 0.5]), lam=0.0)
  np.testing.assert_allclose(s2, [0, 0, 0, 0, 0.5])
  _, s2 = law.annealing_areas(np.array([1.0, 0.5, 1.0]), lam=0.0)
  np.testing.assert_allclose(s2, [0, 0.5, 0.0])
  with pytest.raises(ValueError, match='lam.*1.0'):
    law.annealing_areas(np.ones(3), lam=1.0)


@pytest.mark.parametrize('fit_on', [('constant', 'wsd'), ('wsd',),
                                    ('cosine', 'wsd_s')])
def test_fit_recovers_known_parameters(curves, fit_on):
  fitted = law.fit([curves[n] for n in fit_on], min_step=50)
  for got, want, name in zip(fitted, TRUE, law.LawParams._fields):
    assert abs(got - want) <= 1e-3 * abs(want), (name, got, want)
  for name, curve in curves.items():  # Predicts every other schedule.
    err = law.prediction_error(fitted, curve)
    assert err['max_rel_error'] < 1e-5, (name, err)


def test_fit_with_noise_is_close_and_a_constant_run_alone_gives_c_zero(curves):
  rng = np.random.default_rng(0)
  noisy = [c._replace(losses=c.losses + 1e-4 * rng.standard_normal(
      c.losses.shape)) for c in (curves['constant'], curves['wsd'])]
  fitted = law.fit(noisy, min_step=50)
  assert abs(fitted.C - TRUE.C) < 0.02 and abs(fitted.L0 - TRUE.L0) < 0.05
  # No annealing in a constant run: S2 = 0 and the fit cannot see C.
  assert law.fit([curves['constant']], min_step=50).C == 0.0


def test_fit_and_predict_reject_bad_input(curves):
  with pytest.raises(ValueError, match='at least 4 loss points.*got 0'):
    law.fit([curves['wsd']], min_step=10**6)
  with pytest.raises(ValueError, match=r"'x'.*\[1, 3\].*\[1, 5\]"):
    law.fit([law.Curve(np.arange(1, 6), np.ones(5), np.ones(3), 'x')])


def test_curve_from_metrics_interpolates_the_logged_rates(curves):
  wsd = curves['wsd']
  records = []
  for s in range(0, STEPS + 1, 10):
    # As the core logs: the line at step s has the rate of update s.
    row = {'step': s, 'train_loss': 9.0}
    if s:
      row['learning_rate'] = float(wsd.lrs[s - 1])
    if s and s % 20 == 0:
      row['eval_loss'] = float(law.predict(TRUE, wsd.lrs, [s])[0])
    records.append(row)
  curve = law.curve_from_metrics(records, name='w')
  np.testing.assert_array_equal(curve.steps, np.arange(20, STEPS + 1, 20))
  # Without given rates they are interpolated from the logged ones, exact
  # for this piecewise-linear schedule at the logged steps.
  np.testing.assert_allclose(curve.lrs[9::10], wsd.lrs[9::10], atol=1e-9)
  assert curve.name == 'w'
  given = law.curve_from_metrics(records, lrs=wsd.lrs, name='w')
  np.testing.assert_array_equal(given.lrs, wsd.lrs)
  fitted = law.fit([given, curves['constant']], min_step=50)
  assert abs(fitted.alpha - TRUE.alpha) < 1e-3 * TRUE.alpha
  with pytest.raises(ValueError, match="w: no 'nope' logged"):
    law.curve_from_metrics(records, key='nope', name='w')
  with pytest.raises(ValueError, match='no logged learning_rate'):
    law.curve_from_metrics([{'step': 5, 'eval_loss': 1.0}])


def test_load_curve_takes_the_rates_from_the_recorded_config(tmp_path):
  from configs import wsd
  from dynamics import runs
  config = wsd.get_config('smoke')
  run = runs.Run.create(str(tmp_path), config)
  with run.metric_writer() as writer:
    for s in (5, 10, 15):
      # A wrong logged rate: the recorded schedule must win.
      writer.write(s, {'eval_loss': 1.0 + s, 'learning_rate': 9.0})
  curve = law.load_curve(runs.Run.open(str(tmp_path)))
  expected = law.schedule_values(schedules.from_config(config), 15)
  np.testing.assert_array_equal(curve.lrs, expected)
  assert expected.max() < 9.0
  np.testing.assert_array_equal(curve.losses, [6.0, 11.0, 16.0])
  assert curve.name == tmp_path.name
  given = law.load_curve(run, lrs=np.ones(15), name='g')
  assert given.name == 'g' and np.all(given.lrs == 1.0)


def test_plot_fit_draws_every_curve(curves):
  ax = law.plot_fit(TRUE, list(curves.values()), fitted=('wsd',))
  labels = [line.get_label() for line in ax.get_lines()]
  assert 'wsd (fit)' in labels and 'cosine (predicted)' in labels
  assert len(ax.get_lines()) == 2 * len(curves)
