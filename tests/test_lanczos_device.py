"""`analysis.lanczos.eigsh` on the device (the default driver): the same
answers as the host-driven loop and dense ``eigh``, in one round trip."""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import lanczos as lz
from analysis.lanczos import core

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _matrix(spectrum, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(
      size=(len(spectrum),) * 2))
  return q @ np.diag(spectrum) @ q.T


def _both(matvec, like, k, **kwargs):
  """The device and host drivers on the same problem."""
  out = {}
  for driver in ('device', 'host'):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', lz.ConvergenceWarning)
      out[driver] = lz.eigsh(matvec, like, k, key=jax.random.PRNGKey(0),
                             driver=driver, **kwargs)
    out[driver + '_warnings'] = [str(w.message)[:40] for w in caught]
  return out


def _same(out, exact, atol):
  dev, host = out['device'], out['host']
  np.testing.assert_allclose(dev.eigvals, exact, atol=atol)
  np.testing.assert_allclose(dev.eigvals, host.eigvals, atol=atol)
  # The same decisions: products, restarts, breakdowns, verdicts, warnings.
  assert (dev.num_matvecs, dev.restarts, dev.breakdowns, dev.converged,
          dev.verified) == (host.num_matvecs, host.restarts, host.breakdowns,
                            host.converged, host.verified)
  assert out['device_warnings'] == out['host_warnings']
  np.testing.assert_allclose(dev.residuals, host.residuals, atol=10 * atol)
  y = np.stack([np.asarray(v, np.float64) for v in dev.eigvecs])
  np.testing.assert_allclose(y @ y.T, np.eye(len(y)), atol=10 * atol)


def _apply(m, v):
  return m @ v


def test_device_loop_matches_host_loop_and_dense_eigh():
  """Repeated eigenvalues (a breakdown, then the deflation check), thick
  restarts in a small basis (which='SA'), a copy the start vector cannot
  see, largest magnitude, a capped run: every decision as on the host.
  (One operator function: each shape compiles once for every k and which.)"""
  spectrum = np.array([5., 5., 3., 2., 2., 2., 1., .5, .2, .1, 0., 0., 0.,
                       0., -1., -1., -2., -3., -3., -4.])
  op = lambda m: jax.tree_util.Partial(_apply, jnp.asarray(m))
  with jax.enable_x64(True):
    out = _both(op(_matrix(spectrum)), jnp.zeros(20), 6)
    _same(out, [5, 5, 3, 2, 2, 2], 1e-10)
    assert out['device'].breakdowns >= 1 and out['device'].converged

    d = np.concatenate([[5., 5., 4., 3.], np.linspace(0, 2, 16)])
    out = _both(op(np.diag(d)), jnp.zeros(20), 3,
                init_vector=jnp.ones(20).at[1].set(0.))
    _same(out, [5, 5, 4], 1e-9)

    line = np.linspace(-1, 1, 60)
    out = _both(op(_matrix(line, seed=3)), jnp.zeros(60), 3, which='SA',
                basis_size=16, max_matvecs=600)
    _same(out, line[2::-1], 1e-9)
    assert out['device'].restarts >= 2 and out['device'].converged

    c = _matrix(np.concatenate([[-6., 4.], line[1:-1]]), 1)
    out = _both(op(c), jnp.zeros(60), 2, which='LM')
    _same(out, [4, -6], 1e-9)

    out = _both(op(c), jnp.zeros(60), 2, max_matvecs=8)
    assert not out['device'].converged and out['device'].num_matvecs == 8
    assert out['device_warnings'] == out['host_warnings'] != []
    np.testing.assert_allclose(out['device'].eigvals, out['host'].eigvals,
                               atol=1e-9)


def test_device_loop_low_rank_float32_breakdown():
  """Rank 12 in float32: the true breakdown at step 13 stops the run; the
  answers, products and residuals are the host loop's to float32 rounding."""
  rng = np.random.default_rng(0)
  g = rng.normal(size=(12, 80)) * np.geomspace(1, 3e-3, 12)[:, None] ** 0.5
  a = g.T @ g / 12
  exact = np.linalg.eigvalsh(a)[::-1][:6]
  a32 = jnp.asarray(a, jnp.float32)
  out = _both(jax.tree_util.Partial(lambda m, v: m @ v, a32),
              jnp.zeros(80, jnp.float32), 6)
  dev, host = out['device'], out['host']
  np.testing.assert_allclose(dev.eigvals, exact, rtol=1e-4)
  np.testing.assert_allclose(dev.eigvals, host.eigvals, rtol=1e-5)
  assert dev.num_matvecs == host.num_matvecs < 30 and dev.breakdowns >= 1
  y = np.stack([np.asarray(v, np.float64) for v in dev.eigvecs])
  true = np.linalg.norm(y @ a - dev.eigvals[:, None] * y, axis=1)
  np.testing.assert_allclose(dev.residuals, true, atol=3e-6 * exact[0])


@contextlib.contextmanager
def _count_reads(monkeypatch):
  """Counts explicit ``jax.device_get`` calls, device arrays read any other
  way (``int(x)``, ``float(x)``, ``bool(x)``: implicit round trips; on CPU
  ``np.asarray`` reads through the buffer protocol, unseen) and launches of
  the host loop's compiled chunk (`core.extend`)."""
  counts = {'device_get': 0, 'implicit': 0, 'extend': 0}
  inside = []
  array_type = type(jnp.zeros(1))  # jaxlib's ArrayImpl.
  get, value = jax.device_get, array_type._value
  extend = core.extend

  def counted_get(x):
    counts['device_get'] += 1
    inside.append(1)
    try:
      return get(x)
    finally:
      inside.pop()

  def counted_value(self):
    if not inside:
      counts['implicit'] += 1
    return value.fget(self)

  def counted_extend(*args, **kwargs):
    counts['extend'] += 1
    return extend(*args, **kwargs)

  monkeypatch.setattr(jax, 'device_get', counted_get)
  monkeypatch.setattr(array_type, '_value', property(counted_value))
  monkeypatch.setattr(core, 'extend', counted_extend)
  yield counts


def test_one_round_trip_per_call(monkeypatch):
  """A run of several checks and thick restarts reads the device once (the
  host loop reads it at every check)."""
  line = np.linspace(-1, 1, 60)
  b = jnp.asarray(_matrix(line, seed=3), jnp.float32)
  matvec = jax.tree_util.Partial(lambda m, v: m @ v, b)
  key = np.asarray(jax.random.PRNGKey(0))  # A host key: nothing to read.
  kwargs = dict(which='SA', basis_size=16, max_matvecs=600, tol=1e-4)
  for driver in ('device', 'host'):  # Compiled outside the counts.
    lz.eigsh(matvec, jnp.zeros(60), 3, key=key, driver=driver, **kwargs)
  with _count_reads(monkeypatch) as device:
    out = lz.eigsh(matvec, jnp.zeros(60), 3, key=key, **kwargs)
    float(out.eigvecs[0][0])  # The vectors are on the device: one read.
  assert out.converged and out.restarts >= 2
  assert device == {'device_get': 1, 'implicit': 1, 'extend': 0}
  with _count_reads(monkeypatch) as host:
    lz.eigsh(matvec, jnp.zeros(60), 3, key=key, driver='host', **kwargs)
  assert host['device_get'] > 3 and host['extend'] > 3


def test_bad_driver_and_non_finite_product():
  with pytest.raises(ValueError, match='driver'):
    lz.eigsh(lambda v: v, jnp.zeros(4), 1, key=jax.random.PRNGKey(0),
             driver='gpu')
  with pytest.raises(FloatingPointError, match='product 1\\)'):
    lz.eigsh(lambda v: v / 0.0, jnp.zeros(5), 1, key=jax.random.PRNGKey(0))


def test_top_eigenpairs_takes_the_driver():
  """`analysis.hessian.top_eigenpairs(driver=...)`: both loops give the
  dense answer of a quadratic's Hessian; a wrong name is refused."""
  from analysis import hessian as hs  # pylint: disable=g-import-not-at-top
  scales = jnp.arange(1.0, 9.0)
  loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
  op = hs.curvature('hessian', jnp.zeros(8), [scales], loss_fn=loss)
  for driver in ('device', 'host'):
    vals, _ = hs.top_eigenpairs(op, k=3, driver=driver)
    np.testing.assert_allclose(np.asarray(vals), [8.0, 7.0, 6.0], rtol=1e-5)
  with pytest.raises(ValueError, match='driver'):
    hs.top_eigenpairs(op, k=3, driver='gpu')
