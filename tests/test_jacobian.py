"""Tests of analysis/jacobian: exact Jacobians of known runs, and consistency."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from analysis import jacobian as jac_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')


def quadratic_run(a, eta, steps):
  def train_fn(theta):
    return jac_lib.unroll(lambda t, _: t - eta * a @ t, theta, jnp.zeros((steps, 1)),
                          checkpoint_every=3)
  return train_fn


def test_gradient_descent_on_a_quadratic_has_jacobian_power_of_i_minus_eta_a():
  with jax.enable_x64(True):
    m = jax.random.normal(jax.random.key(0), (5, 5), jnp.float64)
    a = m @ m.T / 5 + jnp.eye(5)
    eta, steps = 0.1, 7
    j = jac_lib.training_jacobian(quadratic_run(a, eta, steps),
                                  params_0=jnp.ones(5), chunk_size=2)
    expected = np.linalg.matrix_power(np.eye(5) - eta * np.asarray(a), steps)
    np.testing.assert_allclose(j, expected, rtol=0, atol=1e-13)
    svd = jac_lib.training_jacobian_svd(quadratic_run(a, eta, steps), k=2,
                                        params_0=jnp.ones(5))
    s = np.linalg.svd(expected, compute_uv=False)
    np.testing.assert_allclose(svd.top, s[:2], rtol=1e-10)
    np.testing.assert_allclose(svd.bottom, s[::-1][:2], rtol=1e-10)
    # u = J v / sigma: a unit left singular vector.
    np.testing.assert_allclose(expected @ np.asarray(svd.top_v[0]),
                               s[0] * np.asarray(svd.top_u[0]), atol=1e-10)


def mlp_run(steps=6, seed=0):
  """SGD with momentum on a tiny tanh MLP, as a pure train_fn (float64)."""
  kx, ky, k1, k2 = jax.random.split(jax.random.key(seed), 4)
  xs = jax.random.normal(kx, (steps, 8, 3), jnp.float64)
  ys = jax.random.normal(ky, (steps, 8, 2), jnp.float64)
  params = {'w1': jax.random.normal(k1, (3, 4), jnp.float64) / 2,
            'w2': jax.random.normal(k2, (4, 2), jnp.float64) / 2,
            'b': jnp.zeros(4, jnp.float64)}
  tx = optax.sgd(0.3, momentum=0.9)

  def loss(p, x, y):
    return 0.5 * jnp.mean((jnp.tanh(x @ p['w1'] + p['b'][None]) @ p['w2'] - y) ** 2)

  def step(carry, batch):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p, *batch), s, p)
    return optax.apply_updates(p, u), s

  def train_fn(p):
    return jac_lib.unroll(step, (p, tx.init(p)), (xs, ys), checkpoint_every=4)[0]
  return train_fn, params


def test_jvp_vjp_dense_and_finite_differences_agree_float64():
  with jax.enable_x64(True):
    train_fn, p0 = mlp_run()
    jvp, vjp = jac_lib.training_jacobian_fn(train_fn, params_0=p0)
    flat0, unravel = ravel_pytree(p0)
    n = flat0.size
    v = jax.random.normal(jax.random.key(1), (n,), jnp.float64)
    u = jax.random.normal(jax.random.key(2), (n,), jnp.float64)
    jv = ravel_pytree(jvp(unravel(v)))[0]
    jtu = ravel_pytree(vjp(unravel(u)))[0]
    assert abs(float(u @ jv - jtu @ v)) < 1e-12 * float(jnp.linalg.norm(u) * jnp.linalg.norm(jv))
    dense = jac_lib.training_jacobian(train_fn, params_0=p0, chunk_size=8)
    stacked = jnp.stack([ravel_pytree(jvp(unravel(e)))[0] for e in jnp.eye(n)], 1)
    np.testing.assert_allclose(dense, stacked, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dense @ v, jv, rtol=0, atol=1e-12)
    eps = 1e-5
    plus = ravel_pytree(train_fn(unravel(flat0 + eps * v)))[0]
    minus = ravel_pytree(train_fn(unravel(flat0 - eps * v)))[0]
    fd = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(fd, jv, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(jv))))
    # Not the identity: training moved these directions.
    assert float(jnp.max(jnp.abs(dense - jnp.eye(n)))) > 1e-2


def test_randomness_not_fixed_is_refused():
  with jax.enable_x64(True):
    train_fn, p0 = mlp_run(steps=2)

    def numpy_dropout(p):
      mask = np.random.rand(4)                # Drawn anew at every trace.
      return train_fn({**p, 'b': p['b'] * mask})

    with pytest.raises(jac_lib.RandomnessNotFixedError, match='two traces'):
      jac_lib.training_jacobian_fn(numpy_dropout, params_0=p0)

    def fixed_key_dropout(p):
      mask = jax.random.bernoulli(jax.random.key(3), 0.5, (4,))
      return train_fn({**p, 'b': p['b'] * mask})

    jvp, _ = jac_lib.training_jacobian_fn(fixed_key_dropout, params_0=p0)
    assert jnp.all(jnp.isfinite(jvp(p0)['w1']))

    def stateful(p):
      noise = jax.lax.rng_uniform(0.0, 1.0, (4,))
      return train_fn({**p, 'b': p['b'] * noise})

    with pytest.raises(jac_lib.RandomnessNotFixedError, match='stateful'):
      jac_lib.training_jacobian_fn(stateful, params_0=p0)


def small_config():
  from configs import jacobian as jacobian_config
  return jacobian_config.get_config('smoke')


def test_a_run_unrolls_the_core_train_step():
  from dynamics import runs
  config = small_config()
  config.num_steps = 5
  run = runs.Run(config)
  train_fn, p0 = jac_lib.make_train_fn(run, checkpoint_every=2)
  # The unrolled run equals the core's own loop, step for step.
  state = run.init_state()
  for i in range(5):
    state, _ = run.train_step(state, jax.tree.map(jnp.asarray,
                                                  run.dataset.train_batch(i)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               train_fn(p0), state.params)
  jvp, vjp = jac_lib.training_jacobian_fn(train_fn, params_0=p0)
  flat0, unravel = ravel_pytree(p0)
  v = jax.random.normal(jax.random.key(0), flat0.shape)
  u = jax.random.normal(jax.random.key(1), flat0.shape)
  jv = ravel_pytree(jvp(unravel(v)))[0]
  jtu = ravel_pytree(vjp(unravel(u)))[0]
  np.testing.assert_allclose(float(u @ jv), float(jtu @ v), rtol=1e-4)
  config.seed = None
  with pytest.raises(jac_lib.RandomnessNotFixedError, match='seed'):
    jac_lib.make_train_fn(runs.Run(config), 5)


def test_config_jacobian_equals_jacfwd_of_a_hand_written_loop():
  """The config's dense Jacobian against the reference's own method.

  Belrose & Scherlis's released code takes ``jax.jacfwd`` of a plain
  ``lax.scan`` of ``grad`` and ``optax.sgd`` with momentum; the benchmark's
  baseline writes it so, on the same batches, schedule and initialization, and
  it must give the same matrix.
  """
  from dynamics import runs
  from experiments.bench_ntk import reference_style_train_fn
  config = small_config()
  config.num_steps = 12
  run = runs.Run(config)
  reference = reference_style_train_fn(config, run)
  train_fn, p0 = jac_lib.make_train_fn(run)
  flat0, unravel = ravel_pytree(p0)
  ours = jac_lib.training_jacobian(train_fn, params_0=p0, chunk_size=100)
  theirs = jax.jacfwd(lambda f: ravel_pytree(reference(unravel(f)))[0])(flat0)
  assert ours.shape == (flat0.size, flat0.size)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(theirs))))
  assert float(jnp.max(jnp.abs(ours - jnp.eye(flat0.size)))) > 1e-2  # training moved


def test_spectrum_split_counts():
  split = jac_lib.spectrum_split([0.5, 0.995, 1.0, 1.009, 1.2, 3.0], bulk_tol=1e-2)
  assert (split['bulk'], split['amplified'], split['contracted']) == (3, 2, 1)
  assert split['bulk_fraction'] == 0.5


def test_analyze_run_builds_once_and_splits_a_complete_basis(monkeypatch):
  from dynamics import runs
  built = []
  build = runs.build
  monkeypatch.setattr(runs, 'build', lambda c: built.append(c) or build(c))
  config = small_config()
  config.num_steps = 5
  report = jac_lib.analyze_run(runs.Run(config), hessian_k=3)
  assert len(built) == 1                     # The caller's Run, nothing else.
  assert report['dense'] and report['num_steps'] == 5
  split = report['split']
  assert split['num'] == report['num_params'] == len(report['singular_values'])
  assert split['bulk'] + split['amplified'] + split['contracted'] == split['num']
  # Dense: the three parts' left singular vectors span the whole space, so a
  # unit Hessian eigenvector's overlaps with them add up to 1.
  overlap = report['hessian']['overlap']
  total = np.sum([overlap[k] for k in ('bulk', 'amplified', 'contracted')], 0)
  np.testing.assert_allclose(total, np.ones(3), rtol=1e-5)
