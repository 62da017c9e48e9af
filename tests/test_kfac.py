"""analysis/hessian/kfac.py against dense GGNs and Fishers of tiny models
(exact answers where KFAC is exact; EKFAC's defining identity elsewhere)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from analysis import hessian as hs
from analysis.hessian import kfac
from analysis.hessian.likelihood import Likelihood

jax.config.update('jax_numpy_rank_promotion', 'raise')


class MLP(nn.Module):
  """5 -> 4 -> 3 tanh MLP; ``widths=()`` is a single linear layer."""
  widths: tuple = (4,)

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = jnp.tanh(nn.Dense(w, param_dtype=x.dtype)(x))
    return nn.Dense(3, param_dtype=x.dtype)(x)


class ConvAttn(nn.Module):
  """A convolution, then DenseGeneral projections shaped like attention's
  (heads as the weight's shape says: (d, 2 heads, 2) and back)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(2, (2, 2), padding='SAME', param_dtype=x.dtype)(x)
    x = jnp.tanh(x).reshape(x.shape[0], 3, -1)
    x = nn.DenseGeneral((2, 2), param_dtype=x.dtype)(x)
    x = nn.DenseGeneral(3, axis=(-2, -1), param_dtype=x.dtype)(jnp.tanh(x))
    return x.mean(1)


def _setup(model, n, shape=(5,), dtype=jnp.float64, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (n,) + shape, dtype)
  batch = {'inputs': x, 'targets': jnp.arange(n) % 3}
  params = model.init(jax.random.PRNGKey(1), x)['params']
  model_fn = lambda p, b: model.apply({'params': p}, b['inputs'])
  return params, batch, model_fn


def _dense(matvec, params):
  flat, unravel = ravel_pytree(params)
  column = lambda e: ravel_pytree(matvec(unravel(e)))[0]
  return np.asarray(jax.vmap(column)(jnp.eye(flat.size, dtype=flat.dtype)))


def _same_layer(params):
  """(P, P) bool: both parameters in the same layer (the block diagonal)."""
  labels = ravel_pytree(jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.full(a.shape, hash(path[0].key) % 9973, a.dtype),
      params))[0]
  return np.asarray(labels[:, None] == labels[None, :])


def _olf(z, b):
  return optax.softmax_cross_entropy_with_integer_labels(
      z, b['targets']).mean()


@pytest.mark.parametrize('widths', [(), (4,)])
def test_one_example_exact(widths):
  """One example: each layer's block of the GGN / Fisher / empirical Fisher
  is a Kronecker product, so KFAC is exact (block diagonal)."""
  with jax.enable_x64(True):
    params, batch, model_fn = _setup(MLP(widths), 1)
    block = _same_layer(params)
    ggn = _dense(hs.curvature('ggn', params, [batch], model_fn=model_fn,
                              output_loss_fn=_olf).matvec, params) * block
    stacked = jax.tree.map(lambda a: a[None], batch)
    exact = kfac.factors(model_fn, params, stacked, flavour='exact')
    np.testing.assert_allclose(
        _dense(lambda v: kfac.apply(exact, v), params), ggn, atol=1e-13)
    lik = Likelihood('categorical', num_samples=3, seed=2)
    for kind, ref in [('kfac', 'fisher'), ('ekfac', 'fisher')]:
      want = _dense(hs.curvature(ref, params, [batch], model_fn=model_fn,
                                 likelihood=lik).matvec, params) * block
      got = _dense(hs.curvature(kind, params, [batch], model_fn=model_fn,
                                likelihood=lik).matvec, params)
      np.testing.assert_allclose(got, want, atol=1e-13, err_msg=kind)
    empirical = kfac.factors(model_fn, params, stacked, flavour='empirical')
    want = _dense(hs.curvature('empirical_fisher', params, [batch],
                               model_fn=model_fn, likelihood=lik).matvec,
                  params) * block
    np.testing.assert_allclose(
        _dense(lambda v: kfac.apply(empirical, v), params), want, atol=1e-13)


def test_one_example_float32():
  params, batch, model_fn = _setup(MLP(), 1, dtype=jnp.float32)
  lik = Likelihood('categorical', num_samples=2)
  want = _dense(hs.curvature('fisher', params, [batch], model_fn=model_fn,
                             likelihood=lik).matvec, params)
  got = _dense(hs.curvature('kfac', params, [batch], model_fn=model_fn,
                            likelihood=lik).matvec, params)
  np.testing.assert_allclose(got, want * _same_layer(params), atol=1e-6)
  # The registry's per-batch product (under jit, as a scan body) agrees.
  from analysis.hessian import registry
  per_batch = jax.jit(lambda v: registry.PRODUCTS['kfac'].fn(
      params, batch, v, jnp.int32(0), model_fn=model_fn, likelihood=lik))
  np.testing.assert_allclose(_dense(per_batch, params), got, atol=1e-6)


def _eigenbasis_forms(kron, layer, params, matrix):
  """``(u_i (x) v_j)^T M (u_i (x) v_j)`` over KFAC's eigenbasis of ``layer``."""
  flat, unravel = ravel_pytree(params)
  q_in, q_out = kron.q_in[layer.name], kron.q_out[layer.name]
  forms = np.zeros((layer.d_in, layer.d_out))
  zero = jax.tree.map(jnp.zeros_like, params)
  for i in range(layer.d_in):
    for j in range(layer.d_out):
      w = jnp.outer(q_in[:, i], q_out[:, j])
      tree = {k: dict(v) for k, v in zero.items()}
      shape = tree[layer.name]['kernel'].shape
      tree[layer.name]['kernel'] = w[:-1].reshape(shape)
      tree[layer.name]['bias'] = w[-1]
      v = np.asarray(ravel_pytree(tree)[0])
      forms[i, j] = v @ matrix @ v
  return forms


@pytest.mark.parametrize('model,shape', [(MLP(), (5,)),
                                         (ConvAttn(), (3, 2, 1))])
def test_ekfac_is_the_fisher_diagonal_in_kfac_eigenbasis(model, shape):
  """EKFAC's eigenvalues are the Fisher's diagonal in KFAC's eigenbasis
  (George et al. 2018, Sec. 3), for any batch; KFAC's eigenvalues are the
  products of its factors' (here checked on the dense matrix)."""
  with jax.enable_x64(True):
    params, batch, model_fn = _setup(model, 4, shape)
    lik = Likelihood('categorical', num_samples=2)
    fisher = _dense(hs.curvature('fisher', params, [batch], model_fn=model_fn,
                                 likelihood=lik).matvec, params)
    stacked = jax.tree.map(lambda a: a[None], batch)
    ek = kfac.factors(model_fn, params, stacked, likelihood=lik,
                      eigenvalue_correction=True)
    assert [l.name for l in ek.layers] == sorted(params)
    for layer in ek.layers:
      np.testing.assert_allclose(
          _eigenbasis_forms(ek, layer, params, fisher), ek.eig[layer.name],
          atol=1e-14, err_msg=layer.name)
    k = kfac.factors(model_fn, params, stacked, likelihood=lik)
    dense_k = _dense(lambda v: kfac.apply(k, v), params)
    want = np.sort(np.linalg.eigvalsh(dense_k))[::-1]
    got = np.sort(np.concatenate(list(kfac.eigenvalues(k).values())))[::-1]
    np.testing.assert_allclose(got, want[:got.size], atol=1e-12)


def test_kfac_by_hand_on_an_mlp():
  """N examples (KFAC is an approximation): the head's block is A (x) G
  with A = mean [h, 1][h, 1]^T and G = mean (diag p - p p^T) (the output
  Hessians: the head's Jacobian is the identity), written out by hand."""
  with jax.enable_x64(True):
    params, batch, model_fn = _setup(MLP(), 3)
    stacked = jax.tree.map(lambda a: a[None], batch)
    k = kfac.factors(model_fn, params, stacked, flavour='exact')
    d0 = params['Dense_0']
    h = np.tanh(np.asarray(batch['inputs']) @ np.asarray(d0['kernel'])
                + np.asarray(d0['bias']))
    a = np.concatenate([h, np.ones((3, 1))], 1)
    probs = np.asarray(jax.nn.softmax(model_fn(params, batch)))
    g = np.mean([np.diag(p) - np.outer(p, p) for p in probs], axis=0)
    v = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape)
                                       + 1.0), params)
    got = kfac.apply(k, v)['Dense_1']
    w = np.concatenate([v['Dense_1']['kernel'], v['Dense_1']['bias'][None]])
    want = (a.T @ a / 3) @ w @ g
    np.testing.assert_allclose(got['kernel'], want[:-1], atol=1e-14)
    np.testing.assert_allclose(got['bias'], want[-1], atol=1e-14)


def test_inverse_and_preconditioned_sharpness():
  with jax.enable_x64(True):
    params, batch, model_fn = _setup(MLP(), 4)
    stacked = jax.tree.map(lambda a: a[None], batch)
    k = kfac.factors(model_fn, params, stacked, flavour='exact')
    dense_k = _dense(lambda v: kfac.apply(k, v), params)
    damped_inv = _dense(lambda v: kfac.apply(k, v, -1.0, 0.1), params)
    np.testing.assert_allclose(
        damped_inv @ (dense_k + 0.1 * np.eye(len(dense_k))),
        np.eye(len(dense_k)), atol=1e-10)
    loss = lambda p, b: _olf(model_fn(p, b), b)
    op = hs.curvature('hessian', params, [batch], loss_fn=loss)
    h = _dense(op.matvec, params)
    want = np.max(np.real(np.linalg.eigvals(damped_inv @ h)))
    got = kfac.preconditioned_sharpness(op, k, 0.1, tol=1e-10)
    np.testing.assert_allclose(got, want, rtol=1e-7)
    with pytest.raises(ValueError, match='damping'):
      kfac.preconditioned_sharpness(op, k, 0.0)


def test_solvers_and_block_report_take_kfac():
  with jax.enable_x64(True):
    params, batch, model_fn = _setup(MLP(), 4)
    op = hs.curvature('kfac', params, [batch, batch], model_fn=model_fn,
                      likelihood='categorical')
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), batch)
    k = kfac.factors(model_fn, params, stacked)
    top = max(e[0] for e in kfac.eigenvalues(k).values())
    vals, _ = hs.top_eigenpairs(op, k=1, tol=1e-10)
    np.testing.assert_allclose(vals[0], top, rtol=1e-8)
    rows = {r['name']: r for r in hs.block_report(op)['blocks']}
    for name, eigs in kfac.eigenvalues(k).items():
      np.testing.assert_allclose(rows[name]['top_eigenvalue'], eigs[0],
                                 rtol=1e-8)
      np.testing.assert_allclose(rows[name]['trace'], eigs.sum(), rtol=1e-8)


def test_bad_input():
  params, batch, model_fn = _setup(MLP(), 2, dtype=jnp.float32)
  stacked = jax.tree.map(lambda a: a[None], batch)
  with pytest.raises(ValueError, match='flavour'):
    kfac.factors(model_fn, params, stacked, flavour='typo')
  with pytest.raises(ValueError, match='no nn.Dense'):
    kfac.factors(lambda p, b: b['inputs'] * p['Dense_0']['bias'][0], params,
                 stacked)

  class Custom(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, dot_general=jax.lax.dot_general, name='odd')(x)

  model = Custom()
  p = model.init(jax.random.PRNGKey(0), batch['inputs'])['params']
  with pytest.raises(NotImplementedError, match="'odd'"):
    kfac.factors(lambda q, b: model.apply({'params': q}, b['inputs']), p,
                 stacked)
