"""Preconditioned sharpness P^{-1}H for SOAP (analysis/hessian/
precondition_kron.py): P written out densely from the state (Kronecker
products of the eigenbases by hand, in NumPy) against the operator, P against
what SOAP's step divides by, and the probe on a trained soap run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from analysis import hessian as hs
from analysis import probes
from analysis.hessian import precondition_kron
from dynamics import config_schema
from dynamics import optim
from dynamics.optim.soap import layout

jax.config.update('jax_numpy_rank_promotion', 'raise')

# max_precond_dim = 4: v's second axis (5) gets no basis; b is 1-D; k is 3-D.
SHAPES = {'w': (3, 4), 'b': (4,), 'v': (4, 5), 'k': (2, 2, 3)}
OPTIONS = {'plain': dict(), 'merged': dict(merge_dims=True,
                                           precondition_1d=True)}


def _problem():
  rng = np.random.default_rng(0)
  batch = {'x': jnp.asarray(rng.normal(size=(6, 3))),
           'y': jnp.asarray(rng.normal(size=(6, 5)))}
  params = {k: jnp.asarray(0.5 * rng.normal(size=s)) for k, s in SHAPES.items()}

  def loss(p, batch):
    x = batch['x']
    h = jnp.tanh(x @ p['w'] + (x ** 2) @ p['k'].reshape(3, 4) + p['b'][None, :])
    return jnp.mean((h @ p['v'] - batch['y']) ** 2)
  return loss, params, batch


def _trained(calls, b1=0.9, **section):
  """``(tx, hyper, params, opt_state)`` of soap after ``calls`` calls, bases
  refreshed every 3 steps."""
  loss, params, batch = _problem()
  c = config_schema.defaults()
  c.optimizer.name, c.optimizer.weight_decay = 'soap', 0.0
  h = c.optimizer.soap
  h.b1, h.b2, h.precondition_frequency, h.max_precond_dim = b1, 0.9, 3, 4
  for k, v in section.items():
    h[k] = v
  tx = optim.build_optimizer(c.optimizer, lambda t: 0.01)
  state, update = tx.init(params), jax.jit(tx.update)
  for _ in range(calls):
    u, state = update(jax.grad(loss)(params, batch), state, params)
    params = optax.apply_updates(params, u)
  return tx, h, params, state


def _dense_p(node, h, params):
  """P = (Q_1 ⊗ ... ⊗ Q_k) diag(D) (...)^T per leaf, block diagonal in
  ravel_pytree's order, from the SOAP state ``node`` (row-major vec:
  vec(Q_L^T X Q_R) = (Q_L ⊗ Q_R)^T vec(X))."""
  t = int(node.count) - 1
  leaves, treedef = jax.tree.flatten(params)
  blocks = []
  for leaf, nu, qs in zip(leaves, treedef.flatten_up_to(node.nu),
                          treedef.flatten_up_to(node.bases)):
    shape, flags = layout(np.shape(leaf), h.max_precond_dim, h.merge_dims,
                          h.precondition_1d)
    bases = iter(np.asarray(q, np.float64) for q in qs)
    q = np.ones((1, 1))
    for size, has in zip(shape, flags):
      q = np.kron(q, next(bases) if has else np.eye(size))
    d = ((np.sqrt(np.asarray(nu, np.float64).ravel()) + h.eps)
         / np.sqrt(1 - h.b2 ** t))
    blocks.append(q @ np.diag(d) @ q.T)
  n = sum(b.shape[0] for b in blocks)
  p, i = np.zeros((n, n)), 0
  for b in blocks:
    p[i:i + len(b), i:i + len(b)] = b
    i += len(b)
  return p


@pytest.mark.parametrize('options', OPTIONS)
def test_matches_the_dense_preconditioned_hessian(options):
  """Six calls (bases refreshed after step 3): lambda_max of P^{-1}H from
  the operator equals the dense one."""
  with jax.enable_x64(True):
    loss, _, batch = _problem()
    _, h, params, state = _trained(6, **OPTIONS[options])
    node = state[0]
    assert len(node.bases['v']) == 1 and len(node.bases['w']) == 2
    assert len(node.bases['b']) == (1 if h.precondition_1d else 0)
    assert len(node.bases['k']) == (2 if h.merge_dims else 3)
    flat, unravel = ravel_pytree(params)
    hess = np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat))
    p = _dense_p(state[0], h, params)
    exact = np.max(np.linalg.eigvals(np.linalg.solve(p, hess)).real)
    op = hs.curvature('hessian', params, [batch], loss_fn=loss)
    assert hs.has_preconditioner('soap')
    got = hs.preconditioned_sharpness(op, state, optimizer='soap', hyper=h,
                                      tol=1e-12, num_iters=flat.size)
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    # Not the unrotated (Adam-like) diagonal: the bases matter here.
    adam_like = np.max(np.linalg.eigvals(
        hess / np.diag(p)[:, None]).real)
    assert abs(adam_like - exact) > 1e-3 * abs(exact)


def test_p_is_what_the_step_divides_by():
  """Without momentum (b1 = 0) and off a refresh, SOAP's update is
  u = -lr P^{-1} g with P read off the state after that update."""
  with jax.enable_x64(True):
    loss, _, batch = _problem()
    tx, h, params, state = _trained(5, b1=0.0)
    g = jax.grad(loss)(params, batch)
    u, after = tx.update(g, state, params)  # count 5: no refresh.
    p = _dense_p(after[0], h, params)
    want = -0.01 * np.linalg.solve(p, ravel_pytree(g)[0])
    np.testing.assert_allclose(ravel_pytree(u)[0], want, rtol=1e-9,
                               atol=1e-12)
    # And P^{-1/2} squared is P^{-1}.
    s = precondition_kron.soap_inverse_sqrt(after, h, params)
    np.testing.assert_allclose(ravel_pytree(s(s(g)))[0],
                               want / -0.01, rtol=1e-9, atol=1e-12)


def test_before_the_first_step_is_a_one_line_error():
  loss, _, batch = _problem()
  _, h, params, state = _trained(1)
  op = hs.curvature('hessian', params, [batch], loss_fn=loss)
  with pytest.raises(ValueError, match=r'^preconditioned sharpness of soap '
                     r'needs a step: [^\n]+$'):
    hs.preconditioned_sharpness(op, state, optimizer='soap', hyper=h)
  h.max_precond_dim = 2
  _, _, params, state = _trained(2)
  with pytest.raises(ValueError, match=r'^soap state bases .* do not match '
                     r'[^\n]+max_precond_dim=2[^\n]+$'):
    hs.preconditioned_sharpness(op, state, optimizer='soap', hyper=h)


class _Run:

  def __init__(self, loss, batch):
    self._loss, self._batch = loss, batch

  def loss_fn(self, model_state):
    del model_state
    return self._loss

  def probe_batches(self, n):
    return [self._batch][:n]


class _State:

  def __init__(self, step, params, opt_state):
    self.step, self.params, self.opt_state = step, params, opt_state
    self.model_state = {}


def test_the_probe_waits_for_the_first_step():
  """After soap's first call (bases built, v = 0) the probe logs the
  sharpness only; after its second, P^{-1}H too."""
  loss, _, batch = _problem()
  for calls, logged in ((1, False), (2, True)):
    _, h, params, state = _trained(calls)
    probe = probes.SharpnessProbe(1, batches=probes.held_out(1),
                                  optimizer=('soap', h))
    out = probe(_State(calls, params, state), _Run(loss, batch))
    assert 'sharpness' in out
    assert ('preconditioned_sharpness' in out) == logged


def test_a_soap_run_checkpoint_gives_the_dense_value(tmp_path):
  """A 2-step soap run (configs/base, an MLP on digits; its 64-wide input
  axis above max_precond_dim): lambda_max(P^{-1}H) of the checkpoint
  restored by Run.open, with the run's optimizer section, is the dense one."""
  from configs import base
  from dynamics import runs, train
  c = base.get_config()
  c.num_steps, c.log_every, c.eval_every, c.progress = 2, 1, 2, False
  c.model.name, c.model.hidden_sizes = 'mlp', (4,)
  c.data.name, c.data.batch_size = 'digits', 8
  c.optimizer.name, c.optimizer.learning_rate = 'soap', 0.01
  c.optimizer.soap.max_precond_dim = 16
  c.schedule.name, c.schedule.warmup_steps = 'constant', 0
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  workdir = str(tmp_path / 'soap')
  train.train_and_evaluate(c, workdir)
  run = runs.Run.open(workdir)
  state = run.state(2)
  loss = run.loss_fn(state.model_state)
  batch = run.probe_batches(1)[0]
  got = hs.preconditioned_sharpness(
      hs.curvature('hessian', state.params, [batch], loss_fn=loss),
      state.opt_state, optimizer=run.config.optimizer.name,
      hyper=run.config.optimizer.soap, tol=1e-5, num_iters=60)
  node = precondition_kron.find_soap_state(state.opt_state)
  params = jax.tree.map(np.asarray, state.params)
  assert sorted({len(q) for q in jax.tree.leaves(
      node.bases, is_leaf=lambda x: isinstance(x, tuple))}) == [0, 1, 2]
  flat, unravel = ravel_pytree(params)
  hess = np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat))
  p = _dense_p(node, run.config.optimizer.soap, params)
  exact = np.max(np.linalg.eigvals(np.linalg.solve(p, hess)).real)
  np.testing.assert_allclose(got, exact, rtol=1e-3)
