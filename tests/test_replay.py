"""dynamics.replay: the scan replay gives the training loop's bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import replay, runs

jax.config.update('jax_numpy_rank_promotion', 'raise')

STEPS = 7


def _loop(run, state, batches):
  """The training loop's way: the jitted, donating train_step from Python."""
  state, per_step = jax.tree.map(jnp.copy, state), []
  for batch in batches:
    state, metrics = run.train_step(state, jax.tree.map(jnp.asarray, batch))
    per_step.append(metrics)
  return state, {k: np.stack([np.asarray(m[k]) for m in per_step])
                 for k in per_step[0]}


def _assert_same_bits(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)


def _setup(name):
  from configs import jacobian, river_valley  # pylint: disable=g-import-not-at-top
  config = {'mlp': jacobian, 'transformer': river_valley}[name].get_config('smoke')
  config.num_steps = STEPS
  config.log_every = 3       # The norms' lax.cond: measured on steps 3, 6, 7.
  run = runs.Run(config)
  batches = [run.dataset.train_batch(i) for i in range(STEPS)]
  stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *batches)
  return run, batches, stacked


@pytest.mark.parametrize('name', ['mlp', 'transformer'])
def test_scan_train_gives_the_loops_bits_float32(name):
  run, batches, stacked = _setup(name)
  state0 = run.init_state()
  assert jax.tree.leaves(state0.params)[0].dtype == jnp.float32
  expected_state, expected_metrics = _loop(run, state0, batches)
  p = run.parts
  scan = jax.jit(lambda s, b, every: replay.scan_train(
      s, b, model=p.model, tx=p.tx, schedule=p.schedule, options=p.options,
      checkpoint_every=every), static_argnums=2)
  for every in (None, 3):   # Plain, and checkpointed segments of 3 + a tail.
    state, metrics = scan(state0, stacked, every)
    _assert_same_bits(state, expected_state)
    assert set(metrics) == set(expected_metrics)
    _assert_same_bits(metrics, expected_metrics)
  # A table of the schedule's own rates: the same bits again, and one
  # compilation serves another table.
  fn = replay.make_scan_train(run, metric_names=('loss', 'learning_rate'))
  rates = np.asarray(jax.jit(run.schedule)(jnp.arange(STEPS)))
  state, metrics = fn(state0, stacked, rates)
  _assert_same_bits(state, expected_state)
  _assert_same_bits(metrics, {k: expected_metrics[k]
                              for k in ('loss', 'learning_rate')})
  _, metrics = fn(state0, stacked, 2 * rates)
  np.testing.assert_array_equal(metrics['learning_rate'], 2 * rates)
  assert metrics['loss'][0] == expected_metrics['loss'][0]   # Before any update.
  assert metrics['loss'][-1] != expected_metrics['loss'][-1]


def test_a_bad_table_is_refused_before_compiling():
  run, _, stacked = _setup('mlp')
  fn = replay.make_scan_train(run)
  state = run.init_state()
  for bad in ([0.1] * (STEPS - 1) + [float('nan')], [-0.1] * STEPS):
    with pytest.raises(ValueError, match='finite values >= 0'):
      fn(state, stacked, np.asarray(bad))


def test_checkpointed_scan_keeps_the_order_of_the_outputs():
  xs = jnp.arange(1.0, 8.0)
  plain = replay.checkpointed_scan(lambda c, x: (c + x, c * x), 0.0, xs)
  for every in (1, 2, 3, 7, 100):
    got = replay.checkpointed_scan(lambda c, x: (c + x, c * x), 0.0, xs, every)
    _assert_same_bits(got, plain)
  with pytest.raises(ValueError, match='checkpoint_every'):
    replay.checkpointed_scan(lambda c, x: (c, x), 0.0, xs, 0)
