"""Fixed-length Lanczos runs: `lanczos` (the tridiagonalization itself) and
`run_steps` (its state, for callers that read the basis)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lanczos import space as space_lib
from analysis.lanczos import trees
from analysis.lanczos.core import Matvec, basis_rows, extend, refresh, start
from analysis.lanczos.core import tridiagonal_eigh  # pylint: disable=unused-import (examples)
from dynamics.types import PyTree


class LanczosResult(NamedTuple):
  """Output of `lanczos`.

  Attributes:
    alphas: ``(m,)`` diagonal of the tridiagonal matrix ``T_m = V A V^T``.
    betas: ``(m - 1,)`` off-diagonal of ``T_m``. A zero marks a restart after
      the Krylov space became invariant (exactly, or to working precision).
    basis: ``(m, n)`` orthonormal Lanczos vectors as rows (flattened in
      `jax.flatten_util.ravel_pytree` order of ``params_like``), or ``None``.
  """
  alphas: jax.Array
  betas: jax.Array
  basis: jax.Array | None


def run_steps(matvec: Matvec, params_like: PyTree, num_iters: int, *,
              key: jax.Array, dtype: Any = None,
              init_vector: PyTree | None = None,
              mask: PyTree | None = None):
  """Exactly ``min(num_iters, dim)`` Lanczos steps (continuing after stalls).

  Returns:
    ``(the final KrylovState, its analysis.lanczos.space.Space)``.


  Raises:
    FloatingPointError: a product was NaN/Inf (the message names which).
  """
  dtype = trees.vector_dtype(params_like, dtype)
  n = trees.size(params_like)
  if n == 0:
    raise ValueError('the operator acts on an empty parameter set')
  if num_iters < 1:
    raise ValueError(f'num_iters must be >= 1, got {num_iters}')
  m = min(int(num_iters), n)
  space = space_lib.make_space(matvec, params_like, dtype, mask)
  use_v0 = init_vector is not None
  state = start(space.like, key,
                space_lib.to_space(space, init_vector) if use_v0 else space.like,
                np.bool_(use_v0), space.like if mask is None else space.mask,
                np.bool_(mask is not None), rows=basis_rows(m, n),
                dtype=dtype.name, shardings=space.shardings)
  while True:
    state = extend(space.op, state, np.int32(m),
                   **space_lib.solver_kwargs(space))
    bad = int(state.nonfinite_at)
    if bad >= 0:
      raise FloatingPointError(
          f'non-finite operator (Hessian-vector) product at Lanczos '
          f'iteration {bad + 1} of {m}: the loss or its curvature is NaN/Inf '
          'at these parameters and batches; stopping.')
    if int(state.j) >= m:
      return state, space
    state = refresh(state, shardings=space.shardings)


def flat_basis(basis: PyTree, m: int) -> jax.Array:
  """The first ``m`` rows of a stacked basis as a ``(m, n)`` matrix in
  `jax.flatten_util.ravel_pytree` order."""
  leaves = jax.tree.leaves(basis)
  if len(leaves) == 1 and leaves[0].ndim == 2:
    return leaves[0][:m]
  return jnp.concatenate([b[:m].reshape(m, -1) for b in leaves], axis=1)


def lanczos(matvec: Matvec, params_like: PyTree, num_iters: int, *,
            key: jax.Array, dtype: Any = None,
            init_vector: PyTree | None = None,
            return_basis: bool = True) -> LanczosResult:
  r"""Lanczos tridiagonalization of a symmetric operator on pytrees.

  With ``q_1 = v_0 / ||v_0||``, ``beta_0 = 0`` and for ``j = 1..m``:

  .. math::
     w = A q_j - \alpha_j q_j - \beta_{j-1} q_{j-1}, \quad
     \alpha_j = q_j^\top A q_j, \quad \beta_j = \|w\|, \quad
     q_{j+1} = w / \beta_j,

  so that ``Q_m^T A Q_m = T_m = tridiag(beta, alpha, beta)``. Every ``w`` is
  re-orthogonalized against all previous ``q`` (classical Gram-Schmidt
  applied twice), which keeps ``Q_m`` orthonormal to working precision: no
  spurious copies of converged eigenvalues appear and the extreme eigenvalues
  converge to machine precision. When ``beta_j`` vanishes (the Krylov space
  is invariant, e.g. for repeated eigenvalues) the iteration restarts from a
  random vector orthogonal to ``Q_j`` and records ``beta_j = 0``, so ``T_m``
  becomes block-diagonal and multiplicities are found. All iterations run in
  one compiled loop, shared by every ``num_iters`` up to the same basis size.

  Args:
    matvec: symmetric linear operator on pytrees shaped like ``params_like``
      (ideally a `jax.tree_util.Partial`, see the module docstring).
    params_like: pytree fixing the vector space (shapes and dtypes).
    num_iters: Lanczos steps ``m`` (capped at the dimension).
    key: PRNG key for the start vector (and restarts).
    dtype: dtype of the Lanczos vectors and ``T`` (e.g. ``jnp.float64`` for
      float32 parameters; needs 64-bit JAX). Default: the parameters' dtype.
    init_vector: optional start vector (pytree), e.g. a previous eigenvector.
    return_basis: also return the Lanczos vectors (flattened).

  Returns:
    ``LanczosResult(alphas (m,), betas (m-1,), basis (m, n) or None)``.

  Raises:
    FloatingPointError: if ``matvec`` returns a non-finite vector.

  Example:
    >>> a = jnp.diag(jnp.arange(1.0, 6.0))
    >>> alphas, betas, _ = lanczos(lambda v: a @ v, jnp.zeros(5), 5,
    ...                            key=jax.random.PRNGKey(0))
    >>> np.round(tridiagonal_eigh(alphas, betas)[0], 4)
    array([5., 4., 3., 2., 1.])

  References:
    Lanczos, "An iteration method for the solution of the eigenvalue problem
    of linear differential and integral operators" (1950); Golub & Van Loan,
    "Matrix Computations", section 10.1.
  """
  state, _ = run_steps(matvec, params_like, num_iters, key=key, dtype=dtype,
                       init_vector=init_vector)
  m = int(state.j)
  return LanczosResult(state.alphas[:m], state.betas[:m - 1],
                       flat_basis(state.basis, m) if return_basis else None)
