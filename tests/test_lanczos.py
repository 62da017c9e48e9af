"""Exact tests of analysis/lanczos.py on matrices with known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import lanczos as lz

jax.config.update('jax_numpy_rank_promotion', 'raise')

# Negative, zero and repeated eigenvalues (multiplicities 2, 3, 4, 2, 2).
SPECTRUM = np.array([5., 5., 3., 2., 2., 2., 1., .5, .2, .1, 0., 0., 0., 0.,
                     -1., -1., -2., -3., -3., -4.])


def _matrix(spectrum, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
  return q @ np.diag(spectrum) @ q.T, q


def test_full_run_recovers_spectrum_with_multiplicities_on_a_pytree():
  with jax.enable_x64(True):
    a, _ = _matrix(SPECTRUM)
    a = jnp.asarray(a)
    # The operator acts on a pytree {'x': (8,), 'y': (3, 4)} of 20 numbers.
    like = {'x': jnp.zeros(8), 'y': jnp.zeros((3, 4))}

    def matvec(tree):
      flat = jnp.concatenate([tree['x'], tree['y'].reshape(-1)])
      out = a @ flat
      return {'x': out[:8], 'y': out[8:].reshape(3, 4)}

    alphas, betas, basis = lz.lanczos(matvec, like, 20, key=jax.random.PRNGKey(1))
    theta, _ = lz.tridiagonal_eigh(alphas, betas)
    np.testing.assert_allclose(theta, np.sort(SPECTRUM)[::-1], atol=1e-12)
    # Multiplicities need restarts: some off-diagonals are exactly zero.
    assert np.sum(np.asarray(betas) == 0) >= 3
    np.testing.assert_allclose(basis @ basis.T, np.eye(20), atol=1e-12)
    # Q A Q^T = T, up to the couplings dropped at restarts (<= sqrt(eps)|A|).
    np.testing.assert_allclose(basis @ a @ basis.T,
                               np.diag(alphas) + np.diag(betas, 1)
                               + np.diag(betas, -1), atol=5 * 1.5e-8)


def test_early_stop_waits_for_repeated_eigenvalues():
  """Top-6 of SPECTRUM is [5, 5, 3, 2, 2, 2]: a run stopping at the first
  invariant subspace would report [5, 3, 2, 1, .5, .2]."""
  with jax.enable_x64(True):
    a = jnp.asarray(_matrix(SPECTRUM)[0])
    run = lz.run_lanczos(lambda v: a @ v, jnp.zeros(20), 20,
                         key=jax.random.PRNGKey(0), tol=1e-8, num_wanted=6)
    theta, _ = lz.tridiagonal_eigh(run.alphas, run.betas)
    np.testing.assert_allclose(theta[:6], [5, 5, 3, 2, 2, 2], atol=1e-10)
    assert run.restarted


def test_converges_early_and_residual_bound_holds():
  with jax.enable_x64(True):
    spectrum = np.concatenate([[10., 8., 6.], np.linspace(-1, 1, 197)])
    a, q = _matrix(spectrum, seed=2)
    a = jnp.asarray(a)
    run = lz.run_lanczos(lambda v: a @ v, jnp.zeros(200), 80,
                         key=jax.random.PRNGKey(0), tol=1e-8, num_wanted=3)
    assert run.num_matvecs < 60   # Well separated: far fewer than n.
    theta, s = lz.tridiagonal_eigh(run.alphas, run.betas)
    np.testing.assert_allclose(theta[:3], [10, 8, 6], rtol=1e-12)
    y = lz.ritz_vectors(run.basis, s[:, :3])
    residual = np.linalg.norm(y @ a - theta[:3, None] * y, axis=1)
    np.testing.assert_allclose(residual, run.beta_last * np.abs(s[-1, :3]),
                               rtol=1e-3, atol=1e-13)
    assert np.all(residual <= 1e-8 * 10 * 1.01)
    # Eigenvectors: |cos| with the true ones is 1.
    np.testing.assert_allclose(np.abs(np.sum(y * q[:, :3].T, axis=1)), 1,
                               atol=1e-12)


def test_without_reorthogonalization_ghost_eigenvalues_appear():
  """Plain three-term Lanczos loses orthogonality and repeats converged
  eigenvalues; the reorthogonalized run does not."""
  with jax.enable_x64(True):
    spectrum = np.concatenate([[100.], np.linspace(0, 1, 199)])
    a = jnp.asarray(_matrix(spectrum, seed=3)[0])
    key = jax.random.PRNGKey(0)
    plain = lz.lanczos(lambda v: a @ v, jnp.zeros(200), 80, key=key,
                       reorthogonalize=False, return_basis=False)
    full = lz.lanczos(lambda v: a @ v, jnp.zeros(200), 80, key=key)
    theta_plain = lz.tridiagonal_eigh(plain.alphas, plain.betas)[0]
    theta_full = lz.tridiagonal_eigh(full.alphas, full.betas)[0]
    assert plain.basis is None
    assert np.sum(np.abs(theta_plain - 100) < 1e-6) >= 2
    assert np.sum(np.abs(theta_full - 100) < 1e-6) == 1


def test_float64_vectors_for_a_float32_operator():
  spectrum = np.concatenate([[3., 2.9], np.linspace(-1, 1, 98)])
  a32 = jnp.asarray(_matrix(spectrum, seed=4)[0], jnp.float32)
  with jax.enable_x64(True):
    run = lz.run_lanczos(lambda v: a32 @ v, jnp.zeros(100, jnp.float32), 60,
                         key=jax.random.PRNGKey(0), dtype=jnp.float64)
    assert run.basis.dtype == jnp.float64
    theta, _ = lz.tridiagonal_eigh(run.alphas, run.betas)
    exact = np.linalg.eigvalsh(np.asarray(a32, np.float64))[::-1]
    np.testing.assert_allclose(theta[:2], exact[:2], rtol=1e-6)
  with pytest.raises(ValueError, match='64-bit'):
    lz.run_lanczos(lambda v: a32 @ v, jnp.zeros(100, jnp.float32), 5,
                   key=jax.random.PRNGKey(0), dtype=jnp.float64)


def test_non_finite_product_names_the_iteration():
  def matvec(v):
    return v / 0.0  # Inf (or NaN) from the first product on.
  with pytest.raises(FloatingPointError, match='iteration 1 of 5'):
    lz.lanczos(matvec, jnp.zeros(5), 5, key=jax.random.PRNGKey(0))


def test_compiled_once_for_partial_operators():
  """A new Partial with new arrays (next probe) reuses the compilation."""
  traces = []

  def apply(a, v):
    traces.append(1)
    return a @ v

  for seed in range(3):
    a = jnp.asarray(_matrix(np.arange(6.), seed)[0], jnp.float32)
    lz.lanczos(jax.tree_util.Partial(apply, a), jnp.zeros(6), 6,
               key=jax.random.PRNGKey(seed))
  assert len(traces) == 1


def test_power_iteration_and_slq_on_a_known_spectrum():
  with jax.enable_x64(True):
    spectrum = np.concatenate([[4., -3.], np.linspace(0, 1, 48)])
    a = jnp.asarray(_matrix(spectrum, seed=5)[0])
    vals, vecs, hvps = lz.run_power_iteration(
        lambda v: a @ v, jnp.zeros(50), 2, key=jax.random.PRNGKey(0),
        max_iters=500, tol=1e-10)
    np.testing.assert_allclose(vals, [4, -3], rtol=1e-6)  # By magnitude.
    assert vecs.shape == (2, 50) and hvps > 20
    # 50 Lanczos steps integrate every polynomial of degree < 100 exactly, so
    # each probe's quadrature reproduces v^T A^p v; with the probes spanning
    # the space (50 probes, a.s.) the averages approach tr(A^p) / n.
    nodes, weights = lz.slq_nodes(lambda v: a @ v, jnp.zeros(50),
                                  num_probes=4, num_iters=50,
                                  key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-12)
    for row in nodes:  # A complete Krylov basis: the nodes are the spectrum.
      np.testing.assert_allclose(np.sort(row), np.sort(spectrum), atol=1e-10)
    grid = np.linspace(-5, 5, 4001)
    density = lz.gaussian_density(nodes, weights, grid, sigma=0.05)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1, atol=1e-6)
