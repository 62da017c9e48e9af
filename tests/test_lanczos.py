"""Exact tests of analysis/lanczos on matrices with known spectra."""

import warnings

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
    # Multiplicities need fresh directions: some off-diagonals are zero (a
    # restart) or at the rounding level (continued from the rounding).
    assert np.sum(np.asarray(betas) <= 1e-11) >= 2
    np.testing.assert_allclose(basis @ basis.T, np.eye(20), atol=1e-12)
    # Q A Q^T = T, up to the couplings dropped at restarts (<= 100 eps |A|).
    np.testing.assert_allclose(basis @ a @ basis.T,
                               np.diag(alphas) + np.diag(betas, 1)
                               + np.diag(betas, -1), atol=5 * 1.5e-8)


def test_eigsh_waits_for_repeated_eigenvalues_and_bounds_residuals():
  """Top-6 of SPECTRUM is [5, 5, 3, 2, 2, 2]: a run stopping at the first
  invariant subspace would report [5, 3, 2, 1, .5, .2]. On a separated
  spectrum the run stops early and its residual estimates are the true ones."""
  with jax.enable_x64(True):
    a = jnp.asarray(_matrix(SPECTRUM)[0])
    out = lz.eigsh(lambda v: a @ v, jnp.zeros(20), 6, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(out.eigvals, [5, 5, 3, 2, 2, 2], atol=1e-10)
    assert out.breakdowns >= 1 and out.converged

    spectrum = np.concatenate([[10., 8., 6.], np.linspace(-1, 1, 197)])
    a, q = _matrix(spectrum, seed=2)
    a = jnp.asarray(a)
    out = lz.eigsh(lambda v: a @ v, jnp.zeros(200), 3,
                   key=jax.random.PRNGKey(0))
    assert out.converged and out.num_matvecs < 40 and out.tol == 1e-9
    np.testing.assert_allclose(out.eigvals, [10, 8, 6], rtol=1e-12)
    y = np.stack([np.asarray(v) for v in out.eigvecs])
    residual = np.linalg.norm(y @ a - out.eigvals[:, None] * y, axis=1)
    np.testing.assert_allclose(residual, out.residuals, rtol=1e-3, atol=1e-13)
    assert np.all(out.relative <= 1e-9)
    np.testing.assert_allclose(np.abs(np.sum(y * q[:, :3].T, axis=1)), 1,
                               atol=1e-12)


def test_thick_restarts_converge_in_a_small_basis():
  """The 3 smallest of 200 equispaced eigenvalues (gaps 0.01 of a width-2
  spectrum) with a basis of 32 vectors: many thick restarts, same answer."""
  with jax.enable_x64(True):
    spectrum = np.linspace(-1, 1, 200)
    a = jnp.asarray(_matrix(spectrum, seed=3)[0])
    out = lz.eigsh(lambda v: a @ v, jnp.zeros(200), 3, which='SA',
                   key=jax.random.PRNGKey(0), basis_size=32,
                   max_matvecs=2000)
    assert out.restarts >= 2 and out.converged
    np.testing.assert_allclose(out.eigvals, spectrum[2::-1], atol=1e-9)


def test_cap_warns_with_residuals_and_products():
  with jax.enable_x64(True):
    spectrum = np.linspace(0, 1, 200)
    a = jnp.asarray(_matrix(spectrum, seed=4)[0])
    with pytest.warns(lz.ConvergenceWarning,
                      match=r'after 12 products \(the cap\).*residuals'):
      out = lz.eigsh(lambda v: a @ v, jnp.zeros(200), 2, max_matvecs=12,
                     key=jax.random.PRNGKey(0))
    assert not out.converged and out.num_matvecs == 12
    assert np.all(out.relative > 0) and np.any(out.relative > out.tol)


def test_tol_zero_runs_the_cap_quietly():
  """``tol=0``: a fixed number of products and no test, so no check for
  missed copies either (it starts once pairs converge), and no warning that
  it did not finish."""
  with jax.enable_x64(True):
    a = jnp.asarray(_matrix(np.linspace(0, 1, 200), seed=4)[0])
    with warnings.catch_warnings():
      warnings.simplefilter('error', lz.ConvergenceWarning)
      out = lz.eigsh(lambda v: a @ v, jnp.zeros(200), 3, max_matvecs=40,
                     tol=0.0, key=jax.random.PRNGKey(0))
    assert out.num_matvecs == 40 and not out.converged and out.verified
    assert out.residual_matvecs == 3 and np.all(out.residuals > 0)


def test_float64_vectors_for_a_float32_operator():
  spectrum = np.concatenate([[3., 2.9], np.linspace(-1, 1, 98)])
  a32 = jnp.asarray(_matrix(spectrum, seed=4)[0], jnp.float32)
  with jax.enable_x64(True):
    out = lz.eigsh(lambda v: a32 @ v, jnp.zeros(100, jnp.float32), 2,
                   key=jax.random.PRNGKey(0), dtype=jnp.float64)
    # The residuals are the float32 operator's: so is the default tol.
    assert out.eigvecs[0].dtype == jnp.float64 and out.tol == 1e-5
    assert out.converged
    exact = np.linalg.eigvalsh(np.asarray(a32, np.float64))[::-1]
    np.testing.assert_allclose(out.eigvals, exact[:2], rtol=1e-6)
  with pytest.raises(ValueError, match='64-bit'):
    lz.eigsh(lambda v: a32 @ v, jnp.zeros(100, jnp.float32), 1,
             key=jax.random.PRNGKey(0), dtype=jnp.float64)


def test_non_finite_product_names_the_iteration():
  def matvec(v):
    return v / 0.0  # Inf (or NaN) from the first product on.
  with pytest.raises(FloatingPointError, match='iteration 1 of 5'):
    lz.lanczos(matvec, jnp.zeros(5), 5, key=jax.random.PRNGKey(0))


def test_compiled_once_for_any_length_k_tol_and_new_operator_arrays():
  """The loop's length is traced: new num_iters, k, tol and a new Partial
  with new arrays (the next probe) reuse one compilation of the loop."""
  traces = []

  def apply(a, v):
    traces.append(1)
    return a @ v

  for seed, (k, cap, tol) in enumerate([(1, 30, None), (3, 50, 1e-3),
                                        (2, 64, 0.0)]):
    a = jnp.asarray(_matrix(np.arange(40.), seed)[0], jnp.float32)
    lz.eigsh(jax.tree_util.Partial(apply, a), jnp.zeros(40), k,
             max_matvecs=cap, tol=tol, key=jax.random.PRNGKey(seed),
             basis_size=40)
  # Twice: the Lanczos loop and the true residuals' products.
  assert len(traces) == 2


def test_power_iteration_and_batched_slq_on_a_known_spectrum():
  with jax.enable_x64(True):
    spectrum = np.concatenate([[4., -3.], np.linspace(0, 1, 48)])
    a = jnp.asarray(_matrix(spectrum, seed=5)[0])
    vals, vecs, hvps, converged = lz.run_power_iteration(
        lambda v: a @ v, jnp.zeros(50), 2, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(vals, [4, -3], rtol=1e-8)  # By magnitude.
    assert len(vecs) == 2 and hvps > 20 and converged.all()
    # 50 Lanczos steps integrate every polynomial of degree < 100 exactly, so
    # each probe's nodes are the spectrum; the batched (vmapped) probes give
    # the same quadrature as the sequential ones.
    batched = lz.slq_nodes(lambda v: a @ v, jnp.zeros(50), num_probes=3,
                           num_iters=50, key=jax.random.PRNGKey(1))
    one_by_one = lz.slq_nodes(lambda v: a @ v, jnp.zeros(50), num_probes=3,
                              num_iters=50, key=jax.random.PRNGKey(1),
                              batch_size=1)
    np.testing.assert_allclose(batched.weights.sum(axis=1), 1, atol=1e-12)
    for row in batched.nodes:
      np.testing.assert_allclose(np.sort(row), np.sort(spectrum), atol=1e-10)
    np.testing.assert_allclose(batched.weights, one_by_one.weights, atol=1e-10)
    grid = np.linspace(-5, 5, 4001)
    density = lz.gaussian_density(batched.nodes, batched.weights, grid, 0.05)
    np.testing.assert_allclose(np.trapezoid(density, grid), 1, atol=1e-6)
    # Adaptive length: a complete space is exact; a wide one stops by tol.
    wide = lz.slq_nodes(lambda v: a @ v, jnp.zeros(50), num_probes=2,
                        num_iters=50, key=jax.random.PRNGKey(1), tol=1e-2,
                        check_every=10)
    assert wide.converged and wide.change <= 1e-2 and wide.num_steps <= 50


# ---------------------------------------------------------------------------
# Correctness in float32 and with repeated eigenvalues (issue 26, item 0).


def _low_rank_fisher(seed=0, n=255, rank=16):
  """An empirical-Fisher-like matrix ``G^T G / 16`` of rank 16 whose
  eigenvalues fall geometrically to 3e-3 of the top one."""
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(rank, n)) * np.geomspace(1, 3e-3, rank)[:, None] ** 0.5
  return g.T @ g / rank


def test_low_rank_float32_matches_dense_with_true_residuals():
  """Rank 16, k = 8, float32: the invariant Krylov space at step 17 is a
  true breakdown (the run then stops, not at the cap), no real coupling is
  dropped on the way, and the reported residuals are the true ||Ay - ty||
  (not the Lanczos estimate, which is exactly 0 there)."""
  a = _low_rank_fisher()
  exact = np.linalg.eigvalsh(a)[::-1][:8]
  a32 = jnp.asarray(a, jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', lz.ConvergenceWarning)  # "Or warns".
    out = lz.eigsh(jax.tree_util.Partial(lambda m, v: m @ v, a32),
                   jnp.zeros(255, jnp.float32), 8, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(out.eigvals, exact, rtol=1e-4)
  assert out.num_matvecs < lz.default_max_matvecs(8, 255) // 2
  y = np.stack([np.asarray(v, np.float64) for v in out.eigvecs])
  true = np.linalg.norm(y @ a - out.eigvals[:, None] * y, axis=1)
  assert np.all(out.residuals > 0)
  # Measured in float32: the same to within its rounding (eps ||A|| ~ 1e-7).
  np.testing.assert_allclose(out.residuals, true, atol=3e-6 * exact[0])


def test_tol_below_the_dtype_warns_and_is_not_reported_converged():
  spectrum = np.concatenate([[3., 2.], np.linspace(-1, 1, 298)])
  a32 = jnp.asarray(_matrix(spectrum, seed=4)[0], jnp.float32)
  with pytest.warns(lz.ConvergenceWarning, match='below what float32'):
    out = lz.eigsh(jax.tree_util.Partial(lambda m, v: m @ v, a32),
                   jnp.zeros(300, jnp.float32), 2, tol=1e-10,
                   key=jax.random.PRNGKey(0))
  assert not out.converged and np.all(out.residuals > 1e-9)


def test_repeated_eigenvalue_outside_the_krylov_space_is_found():
  """diag(5, 5, 4, 3, ...) from a start vector with no weight on the second
  copy: a single Krylov space never sees it (exactly); the check of a fresh
  block orthogonal to the converged pairs does."""
  with jax.enable_x64(True):
    d = jnp.asarray(np.concatenate([[5., 5., 4., 3.], np.linspace(0, 2, 26)]))
    v0 = jnp.ones(30).at[1].set(0.)
    out = lz.eigsh(jax.tree_util.Partial(lambda m, v: m * v, d), jnp.zeros(30),
                   3, key=jax.random.PRNGKey(0), init_vector=v0)
    np.testing.assert_allclose(out.eigvals, [5, 5, 4], atol=1e-9)
    assert out.converged


def test_largest_model_whose_top20_basis_fits():
  """Top-20 by default keeps 128 basis rows; with 8 more parameter-sized
  vectors in float32 a model of n parameters needs 136 * 4 n bytes."""
  from analysis.lanczos.memory import largest_model
  n = largest_model(16e9)
  assert 136 * 4 * n <= 16e9 < 136 * 4 * (n + 1) and n == 29_411_764
  assert largest_model(80e9, dtype='bfloat16') == int(80e9 // (136 * 2))
