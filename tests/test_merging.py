"""Tests for dynamics/merging.py (WSM checkpoint merging)."""

import gc
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics import merging, schedules

jax.config.update('jax_numpy_rank_promotion', 'raise')

SHAPES = {
    'linear': lambda p: 1 - p,
    'cosine': lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    '1-sqrt': lambda p: 1 - math.sqrt(p),
}


@pytest.mark.parametrize('shape', merging.MERGE_SHAPES)
@pytest.mark.parametrize('k', [1, 2, 5, 17])
def test_weights_sum_to_one_are_nonnegative_and_tail_sums_are_alphas(shape, k):
  c = merging.merge_weights(shape, k)
  assert c.shape == (k,) and c.dtype == np.float64
  assert np.all(c >= 0)
  assert abs(c.sum() - 1.0) < 1e-15
  f = SHAPES['linear' if shape == 'uniform' else shape]
  for j in range(k + 1):  # sum_{k' > j} c_k' = alpha_j = f(j / K).
    assert abs(c[j:].sum() - f(j / k)) < 1e-14


def test_weights_golden_values():
  np.testing.assert_array_equal(merging.merge_weights('uniform', 4), [.25] * 4)
  np.testing.assert_allclose(merging.merge_weights('linear', 4), [.25] * 4,
                             rtol=1e-15)
  np.testing.assert_allclose(merging.merge_weights('cosine', 2), [.5, .5],
                             rtol=1e-15)
  s = math.sqrt
  np.testing.assert_allclose(
      merging.merge_weights('1-sqrt', 4),
      [s(.25), s(.5) - s(.25), s(.75) - s(.5), 1 - s(.75)], rtol=1e-14)
  # Cosine puts little weight on the oldest and newest checkpoints.
  c = merging.merge_weights('cosine', 10)
  assert c[0] < c[4] and c[-1] < c[5]
  with pytest.raises(ValueError, match="'exp'"):
    merging.merge_weights('exp', 4)
  with pytest.raises(ValueError, match='num_checkpoints.*0'):
    merging.merge_weights('linear', 0)


def _train_linear_model(lr_of_step, grads_TxP, keep):
  """SGD on L_t(w) = <g_t, w> (constant gradients): w after each kept step."""
  tx = optax.sgd(lr_of_step)
  params = {'w': jnp.zeros(grads_TxP.shape[1]), 'b': jnp.ones(())}
  opt_state = tx.init(params)
  kept = {}

  @jax.jit
  def step(params, opt_state, g_P):
    grads = {'w': g_P, 'b': g_P.sum()}
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for t in range(grads_TxP.shape[0]):
    params, opt_state = step(params, opt_state, grads_TxP[t])
    if t + 1 in keep:
      kept[t + 1] = params
  return kept


@pytest.mark.parametrize('shape', ['linear', 'cosine', '1-sqrt'])
@pytest.mark.parametrize('interval', [1, 3])
def test_merge_reproduces_emulated_decay_exactly(shape, interval):
  num_steps, window, lr = 30, 12, 0.1
  with jax.enable_x64(True):
    grads_TxP = jax.random.normal(jax.random.key(0), (num_steps, 5),
                                  jnp.float64)
    steps = merging.window_steps(num_steps, window, interval)
    k = len(steps)
    assert steps == list(range(num_steps - window + interval, num_steps + 1,
                               interval))
    constant = _train_linear_model(lambda t: lr, grads_TxP, set(steps))
    merged = merging.merge_params((constant[s] for s in steps),
                                  merging.merge_weights(shape, k))

    # The emulated schedule, a staircase: alpha_j = f(j/K) on [t_j, t_{j+1}).
    f = SHAPES[shape]
    t1 = steps[0]
    staircase = np.array([
        lr if t < t1 else lr * f(((t - t1) // interval + 1) / k)
        for t in range(num_steps)])
    decayed = _train_linear_model(lambda t: jnp.asarray(staircase)[t],
                                  grads_TxP, {num_steps})[num_steps]
    for name in ('w', 'b'):
      assert merged[name].dtype == jnp.float64
      np.testing.assert_allclose(merged[name], decayed[name], rtol=1e-13,
                                 atol=1e-13)
    if interval == 1:
      # ... which is the decay of the WSD schedule (float32 values).
      wsd = schedules.wsd(lr, num_steps, 0, window / num_steps, shape)
      np.testing.assert_allclose(staircase, [float(wsd(t)) for t in
                                             range(num_steps)], rtol=1e-6,
                                 atol=1e-8)


def test_merge_of_identical_trees_and_dtypes():
  tree = {'a': jnp.arange(3.0), 'b': {'c': jnp.full((2, 2), 7.0)}}
  merged = merging.merge_params(iter([tree] * 5),
                                merging.merge_weights('1-sqrt', 5))
  chex_close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6)
  jax.tree.map(chex_close, merged, tree)
  assert merged['a'].dtype == jnp.float32


def test_merge_is_streaming():
  """At most one tree besides the accumulator is alive, for any K."""

  def peak_alive(num_checkpoints):
    refs, peak = [], 0

    def stream():
      nonlocal peak
      for k in range(num_checkpoints):
        gc.collect()
        alive = sum(r() is not None for r in refs)
        peak = max(peak, alive)
        tree = {'w': np.full((4, 4), float(k)), 'b': np.full(4, float(k))}
        refs.extend(weakref.ref(leaf) for leaf in jax.tree.leaves(tree))
        yield tree
        del tree

    merged = merging.merge_params(
        stream(), merging.merge_weights('uniform', num_checkpoints))
    np.testing.assert_allclose(merged['w'], (num_checkpoints - 1) / 2,
                               rtol=1e-6)
    gc.collect()
    return peak, sum(r() is not None for r in refs)

  for k in (2, 5, 20):
    peak, alive_after = peak_alive(k)
    # When checkpoint k is loaded, no earlier checkpoint's arrays are held.
    assert peak == 0, (k, peak)
    assert alive_after == 0


def test_bad_weights_and_windows_name_the_value():
  tree = {'w': jnp.ones(2)}
  with pytest.raises(ValueError, match='sum to 1.*0.9'):
    merging.merge_params(iter([tree, tree]), [0.5, 0.4])
  with pytest.raises(ValueError, match='non-negative.*-0.5'):
    merging.merge_params(iter([tree, tree]), [1.5, -0.5])
  with pytest.raises(ValueError, match='got 3 parameter trees for 2 weights|'
                     'more parameter trees'):
    merging.merge_params(iter([tree] * 3), [0.5, 0.5])
  with pytest.raises(ValueError, match='got 1 parameter trees for 2 weights'):
    merging.merge_params(iter([tree]), [0.5, 0.5])
  with pytest.raises(ValueError, match='window=600 is longer than the run.*500'):
    merging.window_steps(500, 600, 100)
  with pytest.raises(ValueError, match='multiple of the interval 100.*250'):
    merging.window_steps(500, 250, 100)
  with pytest.raises(ValueError, match='final_step=450'):
    merging.window_steps(450, 200, 100)
  assert merging.window_steps(500, 500, 100) == [100, 200, 300, 400, 500]
