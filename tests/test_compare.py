"""Tests of experiments/comparison.py, the library of experiments.compare:
the search, steps to a target, speedups (exact answers on made-up curves),
and the whole comparison at smoke size."""

import math

import jax
import numpy as np

from configs import wsd
from experiments import comparison as compare

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _curve(steps, loss):
  return {'steps': list(steps), 'loss': list(loss), 'final': loss[-1]}


def test_steps_to_a_target_interpolates_and_may_never_come():
  assert compare.steps_to([10, 20, 30], [3.0, 2.0, 1.0], 2.5) == 15.0
  assert compare.steps_to([10, 20], [3.0, 2.0], 2.0) == 20.0
  assert compare.steps_to([10, 20], [3.0, 2.0], 1.0) == math.inf
  assert compare.steps_to([10, 20, 30], [1.0, float('nan'), 0.5], 0.9) == 30.0


def test_a_twice_faster_curve_is_a_speedup_of_two():
  steps = np.arange(1, 101)
  base = [_curve(steps, 1.0 / steps + k * 1e-3) for k in range(5)]
  fast = [_curve(steps, 1.0 / (2 * steps) + k * 1e-3) for k in range(5)]
  a, b = compare.speedup_pairs(base, fast)
  np.testing.assert_allclose(np.divide(a, b), 2.0, rtol=1e-9)
  # The other way round: the slow one never reaches the fast one's final
  # loss; the fast one needs half the budget to reach the slow one's.
  a, b = compare.speedup_pairs(fast, base)
  np.testing.assert_allclose(np.divide(a, b), 0.5, rtol=1e-9)


def test_the_search_refines_around_the_coarse_best():
  seen = []

  def engine(name, settings):  # Final loss: (log2 lr - log2 0.016)^2.
    seen.extend(settings)
    return [_curve([1], [(math.log2(lr / 0.016)) ** 2 + 1.0])
            for lr, _, _ in settings]

  r = compare.search(engine, 'adamw', 1e-3, [None], coarse_points=5,
                     coarse_factor=4.0, tune_seed=7)
  coarse = compare.log_grid(1e-3, 4.0, 5)   # 6.25e-5 ... 1.6e-2
  assert [lr for lr, _, _ in seen[:5]] == coarse
  assert {s for _, _, s in seen} == {7}
  # Best coarse 0.016, at the edge: one step out (0.064, worse), then the
  # refined 0.008 and 0.032 (0.016 is not run twice).
  assert [lr for lr, _, _ in seen[5:]] == [0.064, 0.008, 0.032]
  assert r['best']['learning_rate'] == 0.016
  assert len(r['points']) == 8


def test_the_search_follows_a_best_rate_off_the_grid():
  engine = lambda name, settings: [  # Best at 0.25, far above the grid.
      _curve([1], [(math.log2(lr / 0.25)) ** 2]) for lr, _, _ in settings]
  r = compare.search(engine, 'adamw', 1e-3, [None], coarse_points=3,
                     coarse_factor=4.0, tune_seed=0)
  assert r['best']['learning_rate'] == 0.256  # 0.016 * 4 * 4, then refined.


def test_report_verdicts_come_from_stats():
  steps = np.arange(1, 51)
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 1e-3, size=5)
  curves = {'adamw': [_curve(steps, 2 + 1 / steps + e) for e in noise],
            'soap': [_curve(steps, 2 + 1 / (1.5 * steps) + e) for e in noise],
            'adamw (untuned)': [_curve(steps, 2 + 1 / (0.5 * steps) + e)
                                for e in noise]}
  tuning = {k: {'points': [], 'best': {}} for k in ('adamw', 'soap')}
  r = compare.report(tuning, curves, None, 1e-3)
  soap = r['optimizers']['soap']
  # Linear interpolation between steps of a 1/step curve: close, not exact.
  assert abs(soap['speedup_vs_tuned_adamw']['ratio'] - 1.5) < 2e-3
  assert abs(soap['speedup_vs_untuned_adamw']['ratio'] - 3.0) < 4e-3
  assert soap['final_vs_tuned_adamw']['words'].startswith('soap lower (')
  assert soap['reaches_target']['verdict'] == 'reaches'


def _tiny():
  c = wsd.get_config('smoke')
  c.model.name, c.data.name = 'mlp', 'teacher_student'
  c.model.hidden_sizes = (16,)
  c.num_steps, c.schedule.warmup_steps = 20, 2
  c.optimizer.learning_rate = 1e-2
  return c


def test_the_comparison_runs_at_smoke_size(tmp_path):
  from analysis import plots
  engine = compare.InProcess(_tiny(), points=5)
  r = compare.compare(engine, ['adamw', 'soap'], 1e-2, [1, 2],
                      coarse_points=2, coarse_factor=4.0, log=lambda *_: None)
  assert set(r['optimizers']) == {'adamw', 'soap', 'adamw (untuned)'}
  for name in ('adamw', 'soap'):
    t = r['tuning'][name]
    assert len(t['points']) >= 3  # Two coarse, at least one refined.
    assert t['best']['final'] == min(p['final'] for p in t['points'])
    e = r['optimizers'][name]
    assert e['final']['n'] == 2 and np.isfinite(e['final']['mean'])
    assert e['speedup_vs_tuned_adamw']['ratio'] > 0
  # Two seeds: numbers, but no verdict (the project's rule: 5 seeds).
  assert r['optimizers']['soap']['final_vs_tuned_adamw']['words'].startswith(
      'no verdict')
  assert plots.optimizer_comparison(r, str(tmp_path / 'c.png'))
