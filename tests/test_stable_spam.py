"""Tests of dynamics.optim.stable_spam against the authors' update loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics.optim.stable_spam import (reference_steps, scale_by_ada_clip,
                                        stable_spam)

jax.config.update('jax_numpy_rank_promotion', 'raise')


class _ReferenceStableSPAM:
  """The released PyTorch loop, transcribed to NumPy for one parameter.

  Kept deliberately literal, including the aliasing of the moment buffers: the
  local ``exp_avg`` is bound before the reset rebinds the state's entry.
  """

  def __init__(self, lr, b1, b2, eps, wd, gamma1, gamma2, theta, total_t,
               eta_min, gap):
    self.__dict__.update(lr=lr, b1=b1, b2=b2, eps=eps, wd=wd, gamma1=gamma1,
                         gamma2=gamma2, theta=theta, total_t=total_t,
                         eta_min=eta_min, gap=gap)
    self.total_steps = 0
    self.state = {}

  def step(self, p, grad):
    grad = grad.copy()
    self.total_steps += 1
    if self.total_t is not None:
      scale = self.eta_min + (1 - self.eta_min) * (
          1 + math.cos(math.pi * self.total_steps / (self.total_t + 1))) / 2
    else:
      scale = 1.0
    p = p * (1 - self.lr * self.wd)
    state = self.state
    if 'exp_avg' not in state:
      state.update(step=0, exp_avg=np.zeros_like(grad),
                   exp_avg_sq=np.zeros_like(grad), m_norm_t=0.0, v_norm_t=0.0,
                   m_max_t=0.0)
    exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
    max_gradient = np.max(np.abs(grad))
    state['step'] += 1
    m_max_t = self.theta * state['m_max_t'] + (1 - self.theta) * max_gradient
    m_max_hat = m_max_t / (1 - self.theta**state['step'])
    mask = np.abs(grad) > m_max_hat
    if mask.sum() > 0:
      grad[mask] = grad[mask] / max_gradient * m_max_hat
    state['m_max_t'] = m_max_t
    grad_norm = np.linalg.norm(grad)
    g1 = self.gamma1 * scale
    m_norm_t = g1 * state['m_norm_t'] + (1 - g1) * grad_norm
    v_norm_t = self.gamma2 * state['v_norm_t'] + (1 - self.gamma2) * grad_norm**2
    m_norm_hat = m_norm_t / (1 - g1**state['step'])
    v_norm_hat = v_norm_t / (1 - self.gamma2**state['step'])
    c_norm_t = m_norm_hat / (np.sqrt(v_norm_hat) + self.eps)
    if grad_norm > 0:
      grad = grad / grad_norm * c_norm_t
    state['m_norm_t'], state['v_norm_t'] = m_norm_t, v_norm_t
    if self.total_steps % self.gap == 0:
      state['exp_avg'] = np.zeros_like(grad)
      state['exp_avg_sq'] = np.zeros_like(grad)
      state['step'] = 1
    beta1 = self.b1 * scale
    bias_correction1 = 1 - beta1**state['step']
    bias_correction2 = 1 - self.b2**state['step']
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= self.b2
    exp_avg_sq += (1 - self.b2) * grad * grad
    denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + self.eps
    return p - self.lr / bias_correction1 * exp_avg / denom


@pytest.mark.parametrize('total_t', [None, 5])
def test_matches_reference_loop(total_t):
  hyper = dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-8, wd=0.1, gamma1=0.7,
               gamma2=0.9, theta=0.9, eta_min=0.5)
  gap = 3
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    p = rng.normal(size=(4, 3))
    tx = stable_spam(hyper['lr'], hyper['b1'], hyper['b2'], hyper['eps'],
                     hyper['wd'], hyper['gamma1'], hyper['gamma2'],
                     hyper['theta'], reset_interval=gap,
                     beta1_decay_steps=total_t,
                     beta1_decay_min=hyper['eta_min'])
    ref = _ReferenceStableSPAM(total_t=total_t, gap=gap, **hyper)
    p_j = jnp.asarray(p)
    state = tx.init(p_j)
    update = jax.jit(tx.update)
    for t in range(10):
      g = rng.normal(size=p.shape)
      if t in (2, 6):
        g[1, 2] *= 1000.0  # spikes exercise AdaClip
      p = ref.step(p, g)
      u, state = update(jnp.asarray(g), state, p_j)
      p_j = optax.apply_updates(p_j, u)
      np.testing.assert_allclose(p_j, p, rtol=1e-9, atol=1e-12)


def test_spike_is_clipped_to_running_threshold():
  theta = 0.9
  tx = scale_by_ada_clip(theta=theta, reset_interval=None)
  state = tx.init(jnp.zeros(8))
  update = jax.jit(tx.update)
  rng = np.random.default_rng(1)
  running = 0.0
  for t in range(1, 31):
    g = jnp.asarray(rng.uniform(-1, 1, size=8), jnp.float32)
    running = theta * running + (1 - theta) * float(jnp.max(jnp.abs(g)))
    _, state = update(g, state)
  spike = g.at[3].set(1000.0 * g[3] if g[3] != 0 else 1000.0)
  clipped, state = update(spike, state)
  g_max = abs(float(spike[3]))
  running = theta * running + (1 - theta) * g_max
  threshold = running / (1 - theta**31)
  np.testing.assert_allclose(float(state.max_ema[0]), running, rtol=1e-5)
  # The spike lands exactly on the threshold, with its sign.
  np.testing.assert_allclose(float(clipped[3]),
                             math.copysign(threshold, float(spike[3])), rtol=1e-5)
  assert threshold < 0.15 * g_max  # a real clip
  # Entries below the threshold are untouched.
  others = np.delete(np.arange(8), 3)
  np.testing.assert_array_equal(clipped[others], spike[others])


def test_moments_are_zero_right_after_a_reset():
  params = {'w': jnp.ones((3, 2)), 'b': jnp.ones(2)}
  tx = stable_spam(1e-2, reset_interval=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  adam_state = lambda s: s[2]
  for t in range(1, 5):
    updates, state = update(grads, state, params)
    moments = jax.tree.leaves((adam_state(state).mu, adam_state(state).nu))
    is_zero = all(bool(jnp.all(m == 0)) for m in moments)
    assert is_zero == (t == 3), t
    # The reset step still moves the parameters (the code's order).
    assert all(bool(jnp.all(u != 0)) for u in jax.tree.leaves(updates))


def test_reference_steps_restart_after_reset():
  counts = jnp.arange(1, 10)
  k_clip, k_adam, is_reset = reference_steps(counts, 3)
  np.testing.assert_array_equal(k_clip, [1, 2, 3, 2, 3, 4, 2, 3, 4])
  np.testing.assert_array_equal(k_adam, [1, 2, 1, 2, 3, 1, 2, 3, 1])
  np.testing.assert_array_equal(is_reset, [0, 0, 1, 0, 0, 1, 0, 0, 1])


def test_no_recompilation_across_steps():
  traces = []

  tx = stable_spam(1e-2, reset_interval=2)

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = {'w': jnp.ones((3, 2))}
  state = tx.init(params)
  for t in range(5):  # crosses two resets
    params, state = step(params, state, {'w': jnp.full((3, 2), t + 1.0)})
  assert len(traces) == 1
  assert int(state[0].count) == 5


def test_each_tensor_is_treated_on_its_own():
  """Grouped per-tensor statistics give what each tensor alone would get.

  Small tensors of one shape are reduced together and large ones alone; the
  leaves below interleave shapes (so the groups are out of leaf order) and
  include one tensor above the grouping size. Float64, so that the only
  possible difference, the order of a sum, is far below the tolerance.
  """
  with jax.enable_x64(True):
    _check_tensors_alone()


def _check_tensors_alone():
  shapes = [(3, 4), (5,), (3, 4), (300, 300), (5,), (2, 3, 4)]
  keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
  params = {f'p{i}': jax.random.normal(keys[i], s, jnp.float64)
            for i, s in enumerate(shapes)}
  tx = stable_spam(1e-2, weight_decay=0.1, reset_interval=3)
  alone = {k: (tx, tx.init(v)) for k, v in params.items()}
  state = tx.init(params)
  for t in range(5):  # crosses a reset
    grads = {k: jax.random.normal(jax.random.fold_in(keys[len(shapes) + i], t),
                                  v.shape, jnp.float64) * (i + 1) ** 2 * (1 + 50 * (t == 2))
             for i, (k, v) in enumerate(params.items())}
    updates, state = jax.jit(tx.update)(grads, state, params)
    for k in params:
      u, s = alone[k][0].update(grads[k], alone[k][1], params[k])
      alone[k] = (tx, s)
      assert updates[k].dtype == jnp.float64
      np.testing.assert_allclose(updates[k], u, rtol=1e-12, atol=1e-15,
                                 err_msg=f'{k} step {t}')
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize('kwargs, name', [
    (dict(learning_rate=-1.0), 'learning_rate'),
    (dict(learning_rate=1.0, b1=1.0), 'b1'),
    (dict(learning_rate=1.0, b2=1.5), 'b2'),
    (dict(learning_rate=1.0, gamma1=-0.1), 'gamma1'),
    (dict(learning_rate=1.0, gamma2=1.0), 'gamma2'),
    (dict(learning_rate=1.0, theta=1.0), 'theta'),
    (dict(learning_rate=1.0, reset_interval=0), 'reset_interval'),
    (dict(learning_rate=1.0, beta1_decay_steps=0), 'beta1_decay_steps'),
    (dict(learning_rate=1.0, weight_decay=-1.0), 'weight_decay'),
])
def test_bad_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    stable_spam(**kwargs)
