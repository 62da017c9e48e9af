"""Shared harness for the paper optimizers: convergence, compilation, resume.

Every optimizer (AdamP, SGDP, Stable-SPAM, and SAM's gradient fed to a base
optimizer) runs under ``lax.scan`` on a quadratic and on Rosenbrock's function,
is jitted with its state donated without recompiling on the second call, and
resumes bit-for-bit from an orbax checkpoint of its state.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from dynamics.optim.adamp import adamp, sgdp
from dynamics.optim.sam import sam_gradient
from dynamics.optim.stable_spam import stable_spam

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _rosenbrock(params, batch=None):
  del batch
  x, y = params['w'][0], params['w'][1]
  return (1 - x) ** 2 + 100 * (y - x**2) ** 2


_A = jnp.linspace(0.5, 2.0, 12).reshape(3, 4)
_C = jnp.arange(12.0).reshape(3, 4) / 6 - 1


def _quadratic(params, batch=None):
  # A matrix (projected by AdamP/SGDP when the cosine test fires) and a vector.
  del batch
  return (0.5 * jnp.sum(_A * (params['w'] - _C) ** 2)
          + 0.5 * jnp.sum((params['b'] - 1.0) ** 2))


# name -> (tx factory from a learning rate, SAM rho or None).
_OPTIMIZERS = {
    'adamp': (lambda lr: adamp(lr, weight_decay=0.0), None),
    'sgdp': (lambda lr: sgdp(lr, momentum=0.9), None),
    'stable_spam': (lambda lr: stable_spam(lr, reset_interval=500), None),
    'sam_adam': (lambda lr: optax.adam(lr), 1e-3),
    'asam_sgd': (lambda lr: optax.sgd(lr, momentum=0.9), 1e-3),
}
# (learning rate, steps) per problem; the rate is cosine-decayed to zero.
_SETTINGS = {
    'quadratic': {'adamp': (0.05, 500), 'sgdp': (0.1, 300),
                  'stable_spam': (0.05, 500), 'sam_adam': (0.05, 500),
                  'asam_sgd': (0.1, 300)},
    'rosenbrock': {'adamp': (0.05, 3000), 'sgdp': (1e-3, 2000),
                   'stable_spam': (0.02, 2000), 'sam_adam': (0.05, 3000),
                   'asam_sgd': (1e-3, 2000)},
}


def _grad_fn(name):
  _, rho = _OPTIMIZERS[name]
  if rho is None:
    return lambda loss_fn, params: jax.value_and_grad(loss_fn)(params)
  adaptive = name.startswith('asam')
  # The parameters here are named 'w' and 'b', not 'kernel': scale every leaf
  # (the official convention would leave both unscaled, i.e. plain SAM).
  return lambda loss_fn, params: sam_gradient(loss_fn, params, None, rho=rho,
                                              adaptive=adaptive, eta=0.01,
                                              all_leaves=adaptive)


def _make_step(name, tx, loss_fn):
  grad_fn = _grad_fn(name)

  def step(params, opt_state):
    loss, grads = grad_fn(loss_fn, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _run(name, loss_fn, params, lr, steps):
  tx = _OPTIMIZERS[name][0](optax.cosine_decay_schedule(lr, steps))
  step = _make_step(name, tx, loss_fn)

  def body(carry, _):
    params, opt_state, loss = step(*carry)
    return (params, opt_state), loss

  (params, _), _ = jax.jit(lambda p: jax.lax.scan(
      body, (p, tx.init(p)), None, length=steps))(params)
  return params


@pytest.mark.parametrize('name', list(_OPTIMIZERS))
def test_converges_on_quadratic(name):
  params = {'w': jnp.full((3, 4), 0.1, jnp.float32), 'b': jnp.zeros(4)}
  final = _run(name, _quadratic, params, *_SETTINGS['quadratic'][name])
  assert float(_quadratic(params)) > 1.0
  assert float(_quadratic(final)) < 1e-4
  np.testing.assert_allclose(final['w'], _C, atol=1e-2)


@pytest.mark.parametrize('name', list(_OPTIMIZERS))
def test_converges_on_rosenbrock(name):
  params = {'w': jnp.array([-1.2, 1.0])}
  final = _run(name, _rosenbrock, params, *_SETTINGS['rosenbrock'][name])
  assert float(_rosenbrock(final)) < 1e-4
  np.testing.assert_allclose(final['w'], [1.0, 1.0], atol=0.02)


@pytest.mark.parametrize('name', list(_OPTIMIZERS))
def test_no_recompilation_with_donated_state(name):
  traces = []
  tx = _OPTIMIZERS[name][0](optax.linear_schedule(0.01, 0.0, 10))
  step = _make_step(name, tx, _quadratic)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def jitted(params, opt_state):
    traces.append(1)
    return step(params, opt_state)

  params = {'w': jnp.full((3, 4), 0.1, jnp.float32), 'b': jnp.zeros(4)}
  opt_state = tx.init(params)
  params, opt_state, loss1 = jitted(params, opt_state)
  params, opt_state, loss2 = jitted(params, opt_state)
  assert len(traces) == 1
  assert float(loss2) < float(loss1)


@pytest.mark.parametrize('name', list(_OPTIMIZERS))
def test_state_checkpoints_and_resumes_bitwise(name, tmp_path):
  tx = _OPTIMIZERS[name][0](0.01)
  step = jax.jit(_make_step(name, tx, _quadratic))
  params = {'w': jnp.full((3, 4), 0.1, jnp.float32), 'b': jnp.zeros(4)}
  opt_state = tx.init(params)
  for _ in range(3):
    params, opt_state, _ = step(params, opt_state)

  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'ckpt', {'params': params, 'opt_state': opt_state})
    ckpt.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {'params': params, 'opt_state': opt_state})
    restored = ckpt.restore(tmp_path / 'ckpt', abstract)

  a_params, a_state = params, opt_state
  b_params, b_state = restored['params'], restored['opt_state']
  assert jax.tree.structure(b_state) == jax.tree.structure(a_state)
  for _ in range(3):
    a_params, a_state, _ = step(a_params, a_state)
    b_params, b_state, _ = step(b_params, b_state)
  for x, y in zip(jax.tree.leaves((a_params, a_state)),
                  jax.tree.leaves((b_params, b_state))):
    np.testing.assert_array_equal(x, y)
