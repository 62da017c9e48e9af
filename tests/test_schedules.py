"""Tests for dynamics/schedules.py: values at every phase boundary."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from dynamics import schedules

jax.config.update('jax_numpy_rank_promotion', 'raise')

PEAK, FINAL = 0.5, 0.01
SHAPES = {  # f(p) for the decay shapes, p in [0, 1].
    'linear': lambda p: 1 - p,
    'cosine': lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    '1-sqrt': lambda p: 1 - math.sqrt(p),
}


def values(schedule, steps):
  return [float(schedule(s)) for s in steps]


@pytest.mark.parametrize('shape', list(SHAPES))
def test_wsd_boundaries(shape):
  # total 100, warmup 10, decay round(0.25 * 100) = 25 starting at step 75.
  sched = schedules.wsd(PEAK, total_steps=100, warmup_steps=10,
                        decay_fraction=0.25, decay_shape=shape,
                        final_value=FINAL)
  f = SHAPES[shape]
  decay = lambda s: FINAL + (PEAK - FINAL) * f((s - 75) / 25)
  steps = [0, 4, 9, 10, 74, 75, 80, 99, 100, 150]
  expected = [PEAK / 10, PEAK * 5 / 10, PEAK, PEAK, PEAK, PEAK, decay(80),
              decay(99), FINAL, FINAL]
  np.testing.assert_allclose(values(sched, steps), expected, rtol=1e-6)


def test_wsd_without_warmup_and_bad_arguments():
  sched = schedules.wsd(1.0, total_steps=10, warmup_steps=0, decay_fraction=0.5)
  np.testing.assert_allclose(values(sched, range(11)),
                             [1, 1, 1, 1, 1, 1, .8, .6, .4, .2, 0], atol=1e-7)
  with pytest.raises(ValueError, match='decay_fraction.*1.5'):
    schedules.wsd(1.0, 10, 0, 1.5)
  with pytest.raises(ValueError, match='warmup_steps=8'):
    schedules.wsd(1.0, 10, 8, 0.5)
  with pytest.raises(ValueError, match="'exp'"):
    schedules.wsd(1.0, 10, 0, 0.5, decay_shape='exp')


@pytest.mark.parametrize('make', [
    lambda: schedules.wsd(0.1, 100, 10, 0.2),
    lambda: schedules.wsd_s(0.1, (50, 100), 10, 0.2),
    lambda: schedules.constant(0.1, 10),
    lambda: schedules.warmup_cosine(0.1, 100, 10),
    lambda: schedules.warmup_cosine(0.1, 100, 0),
], ids=['wsd', 'wsd_s', 'constant', 'cosine', 'cosine_no_warmup'])
def test_first_update_moves_parameters(make):
  # optax evaluates the schedule at count 0 for the first update.
  tx = optax.sgd(make())
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.ones(3)}
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new['w'][0]) < 1.0
  np.testing.assert_allclose(1.0 - float(new['w'][0]), float(make()(0)),
                             rtol=1e-6)


def test_constant_and_warmup_cosine():
  np.testing.assert_allclose(values(schedules.constant(0.3), [0, 1, 10**6]),
                             [0.3] * 3, rtol=1e-7)
  np.testing.assert_allclose(
      values(schedules.constant(0.3, 3), [0, 1, 2, 3, 100]),
      [0.1, 0.2, 0.3, 0.3, 0.3], rtol=1e-6)
  # Warmup 10 then cosine over the remaining 90 steps to FINAL at step 100.
  sched = schedules.warmup_cosine(PEAK, 100, 10, FINAL)
  cos = lambda s: FINAL + (PEAK - FINAL) * SHAPES['cosine']((s - 10) / 90)
  np.testing.assert_allclose(
      values(sched, [0, 9, 10, 55, 99, 100, 200]),
      [PEAK / 10, PEAK, PEAK, cos(55), cos(99), FINAL, FINAL], rtol=1e-6)
  assert abs(cos(55) - (PEAK + FINAL) / 2) < 1e-12  # Halfway is the mean.
  with pytest.raises(ValueError, match='warmup_steps=20'):
    schedules.warmup_cosine(1.0, 10, 20)


@pytest.mark.parametrize('shape', list(SHAPES))
def test_wsd_s_every_boundary(shape):
  # Budgets 100, 300, 400 with decay_fraction 0.2: decays of 20, 40, 20 steps
  # over [80, 100), [260, 300), [380, 400); warmup 10; FINAL after 400.
  sched = schedules.wsd_s(PEAK, (100, 300, 400), warmup_steps=10,
                          decay_fraction=0.2, decay_shape=shape,
                          final_value=FINAL)
  f = SHAPES[shape]
  d = lambda s, start, length: FINAL + (PEAK - FINAL) * f((s - start) / length)
  expected = {
      0: PEAK / 10, 9: PEAK, 10: PEAK, 79: PEAK,
      80: PEAK, 85: d(85, 80, 20), 99: d(99, 80, 20),
      100: PEAK, 101: PEAK, 259: PEAK,
      260: PEAK, 290: d(290, 260, 40), 299: d(299, 260, 40),
      300: PEAK, 379: PEAK,
      380: PEAK, 395: d(395, 380, 20), 399: d(399, 380, 20),
      400: FINAL, 401: FINAL, 10**5: FINAL,
  }
  np.testing.assert_allclose(values(sched, expected), list(expected.values()),
                             rtol=1e-6)
  # Jit and vectorized evaluation agree with the scalar calls.
  steps = np.array(list(expected))
  np.testing.assert_allclose(jax.jit(sched)(steps), list(expected.values()),
                             rtol=1e-6)


def test_wsd_s_rounding_and_first_budget_matches_wsd():
  # round(0.3 * 15) = round(4.5) = 4 (banker's), round(0.3 * 25) = 8.
  sched = schedules.wsd_s(1.0, [15, 40], 0, 0.3)
  vals = values(sched, range(41))
  assert vals[10] == 1.0 and vals[11] == 1.0 and vals[12] < 1.0
  assert vals[31] == 1.0 and vals[32] == 1.0 and vals[33] < 1.0
  assert vals[15] == 1.0 and vals[40] == 0.0
  # Up to the first budget WSD-S is the WSD run of that length.
  ref = schedules.wsd(1.0, 15, 0, 4 / 15)
  np.testing.assert_allclose(vals[:15], values(ref, range(15)), rtol=1e-6)


@pytest.mark.parametrize('budgets, match', [
    ((100, 100), r'strictly increasing.*budgets\[1\]=100'),
    ((200, 100), r'strictly increasing.*budgets\[1\]=100 after 200'),
    ((0, 100), r'positive.*budgets\[0\]=0'),
    ((10.5, 100), r'budgets\[0\]=10.5'),
    ((), 'at least one budget'),
    (None, 'budgets=None'),
])
def test_wsd_s_rejects_bad_budgets(budgets, match):
  with pytest.raises(ValueError, match=match):
    schedules.wsd_s(1.0, budgets, 0, 0.2)


def test_wsd_s_rejects_warmup_into_decay_and_bad_fraction():
  with pytest.raises(ValueError, match='warmup_steps=90.*budget 100.*step 80'):
    schedules.wsd_s(1.0, (100, 200), 90, 0.2)
  with pytest.raises(ValueError, match='decay_fraction.*-0.1'):
    schedules.wsd_s(1.0, (100,), 0, -0.1)


def test_from_config_wsd_s_and_branch():
  config = base.get_config()
  config.optimizer.learning_rate = 2.0
  config.schedule.name = 'wsd_s'
  config.schedule.warmup_steps = 0
  config.schedule.budgets = (50, 100)
  config.schedule.decay_fraction = 0.2
  sched = schedules.from_config(config)
  np.testing.assert_allclose(values(sched, [39, 40, 45, 50, 89, 95, 100]),
                             [2, 2, 1, 2, 2, 1, 0], rtol=1e-6)
  # A branch follows the parent's stable phase, then decays for decay_steps.
  config.schedule.name = 'wsd'
  config.branch.from_step = 30
  config.branch.decay_steps = 10
  sched = schedules.from_config(config)
  np.testing.assert_allclose(values(sched, [29, 30, 35, 40]), [2, 2, 1, 0],
                             rtol=1e-6)


def test_schedules_and_merges_share_one_decay_formula():
  """`dynamics.decay` holds the one formula per shape: the schedule's
  multiplier (float32, under jit) and the merge's emulated multipliers
  (float64 NumPy) agree, and a merge's 'uniform' is the linear decay."""
  from dynamics import decay, merging
  k = 8
  progress = np.arange(k + 1) / k
  for shape in schedules.DECAY_SHAPES:
    jitted = jax.jit(lambda p, s=shape: schedules.decay_multiplier(p, s))
    np.testing.assert_allclose(merging.emulated_multipliers(shape, k),
                               jitted(jnp.asarray(progress, jnp.float32)),
                               rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(merging.emulated_multipliers('uniform', k),
                                merging.emulated_multipliers('linear', k))
  assert set(merging.MERGE_SHAPES) == {'uniform', *schedules.DECAY_SHAPES}
  assert schedules.DECAY_SHAPES is decay.DECAY_SHAPES
  with pytest.raises(ValueError, match="'uniform'"):
    schedules.decay_multiplier(0.5, 'uniform')  # Not a schedule's shape.
