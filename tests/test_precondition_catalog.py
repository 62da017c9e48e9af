"""Preconditioned sharpness P^{-1}H for the optimizer catalog: each
Adam-like's P against its update rule, the dense eigenvalue, and the
one-line error where no diagonal preconditioner is defined."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from analysis import hessian as hs
from analysis import probes
from analysis.hessian import precondition
from dynamics import config_schema
from dynamics import optim

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _problem():
  x = jnp.linspace(-1., 1., 15).reshape(5, 3)
  y = jnp.sin(jnp.arange(10.)).reshape(5, 2)
  params = {'w': jnp.linspace(-.5, .7, 6).reshape(3, 2),
            'b': jnp.array([.1, -.2])}

  def loss(p, batch):
    out = jnp.tanh(batch['x'] @ p['w'] + p['b'][None, :])
    return jnp.mean((out - batch['y']) ** 2)
  return loss, params, [{'x': x, 'y': y}]


def _trained(name, steps=3, **section):
  """``(tx, hyper, params, opt_state)`` after ``steps`` updates."""
  loss, params, batches = _problem()
  c = config_schema.defaults()
  c.optimizer.name, c.optimizer.weight_decay = name, 0.0
  for k, v in section.items():
    c.optimizer[name][k] = v
  tx = optim.build_optimizer(c.optimizer, lambda t: 0.01)
  state = tx.init(params)
  extra = {'obj_fn': lambda p: loss(p, batches[0])} if name == 'sophia' else {}
  for _ in range(steps):
    g = jax.grad(loss)(params, batches[0])
    u, state = tx.update(g, state, params, **extra)
    params = optax.apply_updates(params, u)
  return tx, c.optimizer[name], params, state


def _dense(loss, params, batch):
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat))


def _hand_diagonal(name, h, state):
  """P written out from the optimizer's update rule."""
  if name == 'adopt':
    nu = precondition.find_second_moment(state)[0]
    return jax.tree.map(lambda n: np.maximum(np.sqrt(n), h.eps), nu)
  if name == 'sophia':
    nu = precondition.find_second_moment(state)[0]
    return jax.tree.map(lambda n: np.maximum(h.gamma * n, h.eps), nu)
  nu, count = precondition.find_second_moment(state)
  return jax.tree.map(
      lambda n: np.sqrt(n / (1 - h.b2 ** int(count))) + h.eps, nu)


@pytest.mark.parametrize('name', ['nadamw', 'ademamix', 'adopt',
                                  'schedule_free_adamw', 'adamw', 'sophia'])
def test_adam_likes_match_the_dense_preconditioned_hessian(name):
  with jax.enable_x64(True):
    loss, _, batches = _problem()
    _, h, params, state = _trained(name)
    diag = ravel_pytree(_hand_diagonal(name, h, state))[0]
    exact = np.max(np.linalg.eigvals(
        _dense(loss, params, batches[0]) / np.asarray(diag)[:, None]).real)
    op = hs.curvature('hessian', params, batches, loss_fn=loss)
    got = hs.preconditioned_sharpness(op, state, optimizer=name, hyper=h,
                                      tol=1e-10, num_iters=20)
    np.testing.assert_allclose(got, exact, rtol=1e-6)


def test_adafactor_diagonal_is_what_its_update_divides_by():
  """Without momentum, clipping or parameter scale Adafactor's step is
  u = -lr g / P: P read off the state equals -lr g / u."""
  with jax.enable_x64(True):
    loss, params0, batches = _problem()
    tx, h, params, state = _trained(
        'adafactor', min_dim_size_to_factor=2, clipping_threshold=None,
        multiply_by_parameter_scale=False)
    g = jax.grad(loss)(params, batches[0])
    u, after = tx.update(g, state, params)
    scale, count = precondition.preconditioner_scale(
        after, optimizer='adafactor', hyper=h, like=params0)
    assert count == 4
    diag = jax.tree.map(lambda s: 1.0 / s ** 2, scale)
    want = jax.tree.map(lambda gi, ui: -0.01 * gi / ui, g, u)
    for a, b in zip(jax.tree.leaves(diag), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-9)
    assert np.ptp(np.asarray(diag['w'])) > 0  # Factored, not a scalar.
    exact = np.max(np.linalg.eigvals(_dense(loss, params, batches[0])
                                     / ravel_pytree(diag)[0][:, None]).real)
    op = hs.curvature('hessian', params, batches, loss_fn=loss)
    got = hs.preconditioned_sharpness(op, after, optimizer='adafactor',
                                      hyper=h, tol=1e-10, num_iters=20)
    np.testing.assert_allclose(got, exact, rtol=1e-6)


@pytest.mark.parametrize('name', ['muon', 'lion', 'signum', 'prodigy'])
def test_no_diagonal_preconditioner_is_a_one_line_error(name):
  loss, _, batches = _problem()
  _, h, params, state = _trained(name, steps=1)
  op = hs.curvature('hessian', params, batches, loss_fn=loss)
  with pytest.raises(ValueError, match=rf'^preconditioned sharpness is not '
                     rf'defined for optimizer.name={name}: [^\n]+$'):
    hs.preconditioned_sharpness(op, state, optimizer=name, hyper=h)


class _Run:

  def __init__(self, loss, batches):
    self._loss, self._batches = loss, batches

  def loss_fn(self, model_state):
    del model_state
    return self._loss

  def probe_batches(self, n):
    return self._batches[:n]


class _State:

  def __init__(self, step, params, opt_state):
    self.step, self.params, self.opt_state = step, params, opt_state
    self.model_state = {}


@pytest.mark.parametrize('name,logged', [('muon', False), ('nadamw', True),
                                         ('adafactor', True)])
def test_the_probe_logs_it_where_defined(name, logged):
  loss, _, batches = _problem()
  _, h, params, state = _trained(name, steps=2)
  probe = probes.SharpnessProbe(1, batches=probes.held_out(1),
                                optimizer=(name, h))
  out = probe(_State(2, params, state), _Run(loss, batches))
  assert 'sharpness' in out
  assert ('preconditioned_sharpness' in out) == logged
  if logged:
    assert np.isfinite(out['preconditioned_sharpness'])
