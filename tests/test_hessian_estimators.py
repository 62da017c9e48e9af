"""Trace and diagonal estimators: exact where they should be, unbiased, and
Hutch++ / XTrace / XDiag far less noisy than Hutchinson on decaying spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import hessian as hs
from analysis.hessian import estimators

jax.config.update('jax_numpy_rank_promotion', 'raise')

N = 60


def _operator(spectrum, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(N, N)))
  a = q @ np.diag(spectrum) @ q.T
  return jax.tree_util.Partial(lambda m, v: m @ v, jnp.asarray(a)), a


def _samples(method, op, num, seeds):
  like = jnp.zeros(N)
  out = []
  for s in seeds:
    key = jax.random.PRNGKey(s)
    if method == 'hutchinson':
      out.append(jnp.mean(estimators.hutchinson(op, like, None, key, num=num,
                                                batch_size=16)))
    elif method == 'hutch++':
      out.append(estimators.hutch_plus_plus(op, like, None, key, num=num,
                                            batch_size=16)[0])
    elif method == 'xtrace':
      out.append(jnp.mean(estimators.xtrace(op, like, None, key, num=num,
                                            dim=N, batch_size=16)[0]))
    elif method == 'diag':
      out.append(jnp.mean(estimators.hutchinson(
          op, like, None, key, num=num, batch_size=16, diag=True), axis=0))
    else:
      out.append(estimators.xdiag(op, like, None, key, num=num, batch_size=16))
  return np.asarray(out, np.float64)


def test_low_rank_is_exact_and_diagonal_hutchinson_is_exact_on_diagonals():
  with jax.enable_x64(True):
    op, a = _operator(np.r_[np.arange(5, 0, -1.0), np.zeros(N - 5)])
    # Rank 5: the sketch of 10 (Hutch++) or 15 (XTrace, XDiag) probes spans
    # the range, and the remainder is exactly zero.
    for method in ('hutch++', 'xtrace'):
      np.testing.assert_allclose(_samples(method, op, 30, [0]), np.trace(a),
                                 rtol=1e-10)
    np.testing.assert_allclose(_samples('xdiag', op, 30, [0])[0], np.diag(a),
                               atol=1e-10)
    diag = jax.tree_util.Partial(lambda d, v: d * v, jnp.arange(1.0, N + 1))
    np.testing.assert_allclose(_samples('diag', diag, 2, [0])[0],
                               np.arange(1.0, N + 1), rtol=1e-12)


@pytest.mark.parametrize('method', ['hutchinson', 'hutch++', 'xtrace', 'xdiag'])
def test_unbiased_and_lower_variance_on_a_decaying_spectrum(method):
  """Over 60 seeds the mean is within 4 standard errors of the truth; at 30
  products Hutch++ / XTrace / XDiag are >= 3x less spread than Hutchinson."""
  with jax.enable_x64(True):
    op, a = _operator(0.7 ** np.arange(N), seed=1)
    seeds = range(60)
    values = _samples(method, op, 30, seeds)
    truth = np.diag(a) if method == 'xdiag' else np.trace(a)
    stderr = values.std(axis=0, ddof=1) / np.sqrt(len(seeds))
    assert np.all(np.abs(values.mean(axis=0) - truth) < 4 * stderr + 1e-12)
    reference = _samples('diag' if method == 'xdiag' else 'hutchinson', op,
                         30, seeds).std(axis=0).mean()
    if method != 'hutchinson':
      assert values.std(axis=0).mean() < reference / 3


def test_trace_and_diagonal_of_a_loss_and_the_adaptive_stop():
  """The public functions on a loss whose Hessian is a known matrix:
  Hutch++ and XTrace within 4 of Hutch++'s standard errors of its trace; Hutchinson adds
  probes up to its cap and says it missed rtol; the diagonal of a diagonal
  Hessian is exact; a sketch as large as the space is refused."""
  with jax.enable_x64(True):
    _, a = _operator(0.7 ** np.arange(N), seed=2)
    loss_fn = lambda p, b: 0.5 * p['w'] @ b @ p['w']
    params, batches = {'w': jnp.zeros(N)}, [jnp.asarray(a)]
    op = hs.curvature('hessian', params, batches, loss_fn=loss_fn)
    bars = {}
    for method in ('hutch++', 'xtrace'):
      estimate, bars[method], info = hs.trace(
          op, method=method, num_hvps=30, key=jax.random.PRNGKey(3),
          return_info=True)
      assert info['num_hvps'] == 30
      assert abs(estimate - np.trace(a)) < 4 * bars['hutch++'], method
    assert bars['hutch++'] > 0 and np.isnan(bars['xtrace'])  # XTrace: none.
    with pytest.warns(hs.ConvergenceWarning, match=r'after 20 HVPs'):
      _, stderr, info = hs.trace(op, rtol=1e-6, method='hutchinson',
                                 max_hvps=20, return_info=True)
    assert not info['converged'] and info['num_hvps'] == 20
    quadratic = lambda p, b: 0.5 * jnp.sum(b * p['w'] ** 2)
    diag_op = hs.curvature('hessian', {'w': jnp.zeros(4)},
                           [jnp.array([1.0, 2.0, 3.0, 4.0])],
                           loss_fn=quadratic)
    d = hs.diagonal(diag_op, num_hvps=2)
    np.testing.assert_allclose(d['w'], [1, 2, 3, 4], rtol=1e-10)
    with pytest.raises(ValueError, match='not fewer than the dimension'):
      hs.diagonal(diag_op, method='xdiag', num_hvps=10)
    with pytest.raises(ValueError, match="method must be one of"):
      hs.trace(op, method='hutch+')
