r"""Extreme eigenpairs of a symmetric operator, converged or said loudly.

`eigsh` runs Lanczos with full reorthogonalization (`analysis.lanczos.core`)
in compiled chunks and checks, between chunks, the residuals of the wanted
Ritz pairs :math:`(\theta_i, y_i)`:

.. math::
   \|A y_i - \theta_i y_i\| = \beta_j |s_{j,i}|
   \le \mathrm{tol} \cdot \max(|\theta_i|, \epsilon^{2/3} \max_l |\theta_l|),

with a tolerance that fits the dtype (`default_tol`) and a cap on operator
products that grows with ``k`` and the dimension (`default_max_matvecs`).
When the basis is full it is thick-restarted (Wu & Simon, 2000) from the best
Ritz vectors, so memory stays at ``basis_size`` vectors whatever the cap.
A run that hits its cap unconverged warns (`ConvergenceWarning`) with the
residuals and the products spent.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, List, NamedTuple

import jax
import jax.numpy as jnp  # pylint: disable=unused-import (examples)
import numpy as np

from analysis.lanczos import core, space as space_lib, trees
from dynamics import progress as progress_lib
from dynamics.types import PyTree

_DEFAULT_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}


class ConvergenceWarning(RuntimeWarning):
  """An iterative estimate stopped at its cap before reaching its tolerance."""


def default_tol(dtype: Any) -> float:
  """Relative residual the solvers stop at: 1e-5 in float32, 1e-9 in float64.

  Example:
    >>> default_tol(np.float32), default_tol(np.float64)
    (1e-05, 1e-09)
  """
  return _DEFAULT_TOL.get(np.dtype(dtype), 1e-3)


def default_max_matvecs(k: int, dim: int) -> int:
  """The default cap on operator products: ``40 + 20 k + 10 log2(dim)``.

  Lanczos needs more products for more eigenpairs and, through the spectrum's
  spread, larger models; a space of dimension ``dim`` that fits the basis is
  exhausted in ``dim`` products.

  Example:
    >>> default_max_matvecs(5, 4810), default_max_matvecs(1, 50)
    (270, 50)
  """
  cap = 40 + 20 * k + 10 * math.ceil(math.log2(max(dim, 2)))
  return int(min(cap, dim)) if dim <= 128 else int(cap)


def default_basis_size(k: int, max_matvecs: int, dim: int) -> int:
  """Vectors kept (memory): enough for the cap, at most 128 unless ``k``
  needs more (thick restarts take over beyond it)."""
  return int(min(dim, max(min(max_matvecs, 128), 2 * k + 16)))


class EigshResult(NamedTuple):
  """What `eigsh` returns.

  Attributes:
    eigvals: ``(k,)`` float64 Ritz values, descending.
    eigvecs: their Ritz vectors (pytrees like ``params_like``) or None.
    residuals: ``(k,)`` residual norms :math:`\\|Ay - \\theta y\\|`.
    relative: ``(k,)`` the same relative to ``|theta|`` (with the floor of
      the stopping rule): each eigenpair converged where it is <= ``tol``.
    num_matvecs: operator products spent.
    converged: every residual met the tolerance.
    tol: the tolerance used.
    restarts: thick restarts performed.
    breakdowns: invariant Krylov spaces met (then continued at random).
  """
  eigvals: np.ndarray
  eigvecs: List[PyTree] | None
  residuals: np.ndarray
  relative: np.ndarray
  num_matvecs: int
  converged: bool
  tol: float
  restarts: int
  breakdowns: int


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  """Indices of the ``k`` wanted Ritz values of an ascending ``theta``."""
  if which == 'LA':
    return np.arange(len(theta) - k, len(theta))
  if which == 'SA':
    return np.arange(k)
  return np.sort(np.argsort(np.abs(theta), kind='stable')[len(theta) - k:])


def _ritz(alphas, betas, proj, j: int):
  """Ascending Ritz values, their coordinates ``(j, j)`` and ``beta_j``, from
  the tridiagonal ``(alphas, betas)`` or (after thick restarts) ``proj``."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  if proj is not None:
    proj = np.asarray(proj, np.float64)[:j, :j]
    theta, s = scipy.linalg.eigh(0.5 * (proj + proj.T), driver='evr')
    beta = float(np.asarray(betas)[j - 1])
  else:
    alphas = np.asarray(alphas, np.float64)[:j]
    betas = np.asarray(betas, np.float64)[:j]
    beta = float(betas[j - 1])
    if j == 1:
      theta, s = alphas.copy(), np.ones((1, 1))
    else:
      theta, s = scipy.linalg.eigh_tridiagonal(alphas, betas[:j - 1])
  return theta, s, beta


def eigsh(matvec: core.Matvec, params_like: PyTree, k: int, *,
          key: jax.Array, which: str = 'LA', tol: float | None = None,
          max_matvecs: int | None = None, basis_size: int | None = None,
          dtype: Any = None, init_vector: PyTree | None = None,
          min_iters: int = 1, vectors: bool = True, progress: bool = False,
          mask: PyTree | None = None, dim: int | None = None,
          name: str = 'eigsh', unit: str = 'products') -> EigshResult:
  r"""``k`` extreme eigenpairs of a symmetric operator on pytrees (Lanczos).

  Args:
    matvec: ``v -> Av`` on pytrees shaped like ``params_like`` (ideally a
      `jax.tree_util.Partial`, compiled once for all its arrays).
    params_like: pytree fixing the space (shapes, dtypes and, when sharded,
      the layout of the basis).
    k: eigenpairs wanted.
    key: PRNG key of the start vector (and of fresh vectors after an
      invariant subspace).
    which: 'LA' (largest algebraic), 'SA' (smallest) or 'LM' (largest |theta|).
    tol: relative residual to stop at (None: `default_tol` of the dtype; 0:
      run to the cap without checking).
    max_matvecs: cap on operator products (None: `default_max_matvecs`).
    basis_size: Lanczos vectors kept (None: `default_basis_size`). Given,
      the basis has that many rows whatever ``dim``, so that every block of
      the same parameters shares one compilation.
    dtype: the vectors' dtype (default: the parameters', at least float32).
    init_vector: start vector (pytree), e.g. a previous eigenvector.
    mask: 0/1 pytree like ``params_like``: solve in the subspace of its ones
      (a block of parameters; ``matvec`` must map it into itself).
    dim: the dimension of that subspace (the number of ones).
    min_iters: never stop before this many products.
    vectors: also return the Ritz vectors.
    progress: show a progress bar over products.
    name, unit: how warnings and the progress bar name the call and products.

  Returns:
    An `EigshResult`.

  Raises:
    ValueError: ``k`` not in ``[1, dim]``, or a bad ``which``.
    FloatingPointError: a product was NaN/Inf (the message names which).

  Example:
    >>> a = jnp.diag(jnp.arange(1.0, 7.0))
    >>> out = eigsh(lambda v: a @ v, jnp.zeros(6), 2, key=jax.random.PRNGKey(0))
    >>> np.round(out.eigvals, 5), out.converged
    (array([6., 5.]), True)

  References:
    Paige, "The computation of eigenvalues and eigenvectors of very large
    sparse matrices" (1971); Wu & Simon, "Thick-restart Lanczos method for
    large symmetric eigenvalue problems" (SIMAX 2000).
  """
  if which not in ('LA', 'SA', 'LM'):
    raise ValueError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
  dtype = trees.vector_dtype(params_like, dtype)
  n = trees.size(params_like) if dim is None else int(dim)
  if n == 0:
    raise ValueError('the operator acts on an empty parameter set')
  if not 1 <= k <= n:
    raise ValueError(f'k={k} must be between 1 and the dimension ({n})')
  tol = default_tol(dtype) if tol is None else float(tol)
  cap = default_max_matvecs(k, n) if max_matvecs is None else int(max_matvecs)
  if cap < k:
    raise ValueError(
        f'k={k} is larger than the cap on products ({cap}): m products give '
        'at most m eigenvalues; raise the cap (num_iters) to at least 2k')
  if basis_size is None:
    size = default_basis_size(k, cap, n)
    rows = core.basis_rows(max(size, min(k + 2, n)), n)
  else:  # The same rows for every block of the same parameters: one compile.
    rows = core.basis_rows(max(basis_size, min(k + 2, n)),
                           trees.size(params_like))
  limit = min(rows, n)
  space = space_lib.make_space(matvec, params_like, dtype, mask, n)
  static = space_lib.solver_kwargs(space)
  use_v0 = init_vector is not None
  state = core.start(
      space.like, key,
      space_lib.to_space(space, init_vector) if use_v0 else space.like,
      np.bool_(use_v0), space.like if mask is None else space.mask,
      np.bool_(mask is not None), rows=rows, dtype=dtype.name,
      shardings=space.shardings)
  eps = float(np.finfo(dtype).eps)
  bar = progress_lib.bar(cap, f'{name} {unit}', enabled=progress, leave=False)
  restarts, done_total, history, j = 0, 0, [], 0
  # A cold start needs ~3k products before k pairs can converge; a warm
  # start (the previous eigenvector) may need only a few.
  chunk = max(min_iters, k + 2 if use_v0 else 3 * k + 5, 4)
  while True:
    stop = min(j + chunk, limit, j + cap - done_total)
    state = core.extend(space.op, state, np.int32(stop), **static)
    # One transfer per check.
    j, total, bad, stalled, breakdowns, alphas, betas, proj = jax.device_get(
        (state.j, state.num_matvecs, state.nonfinite_at, state.stalled,
         state.breakdowns, state.alphas, state.betas,
         state.proj if restarts else None))
    j, total, bad, breakdowns = int(j), int(total), int(bad), int(breakdowns)
    bar.update(total - done_total)
    done_total = total
    if bad >= 0:
      bar.close()
      raise FloatingPointError(
          f'{name}: non-finite operator product ({unit[:-1]} {bad + 1}): the '
          'loss or its curvature is NaN/Inf at these parameters and batches;'
          ' stopping.')
    if stalled and j < n:
      state = core.refresh(state, shardings=space.shardings)
      breakdowns += 1
    theta, s, beta = _ritz(alphas, betas, proj, j)
    idx = _wanted(theta, min(k, j), which)
    residuals = np.abs(beta * s[j - 1, idx])
    floor = eps ** (2 / 3) * np.abs(theta).max()
    with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
      ratio = residuals / (tol * np.maximum(np.abs(theta[idx]), floor))
    ratio = np.nan_to_num(ratio, nan=np.inf)
    complete = j >= n and restarts == 0
    converged = complete or (j >= k and tol > 0 and bool(np.all(ratio <= 1)))
    early_ok = breakdowns == 0 and total >= min_iters
    if complete or (converged and early_ok) or total >= cap:
      break
    if j >= limit:  # The basis is full: keep the best Ritz vectors.
      keep = min(j - 1, k + max(k, (j - k) // 2))
      order = _wanted(theta, keep, which)
      coeffs = np.zeros((rows, rows))
      coeffs[:j, :keep] = s[:, order]
      theta_keep = np.zeros(rows)
      theta_keep[:keep] = theta[order]
      state = core.thick_restart(state, coeffs, theta_keep, np.int32(keep),
                                 shardings=space.shardings)
      restarts, j = restarts + 1, keep
    worst = float(np.max(ratio))
    history.append((total, math.log(max(worst, 1e-300))))
    chunk = _next_chunk(history, j, tol)
  bar.close()
  order = idx[np.argsort(-theta[idx], kind='stable')]
  residuals = np.abs(beta * s[j - 1, order])
  relative = residuals / np.maximum(np.maximum(np.abs(theta[order]), floor),
                                    np.finfo(np.float64).tiny)
  if complete:
    relative = np.zeros_like(relative)
  if not converged and tol > 0:
    warnings.warn(
        f'{name} did not converge: after {total} {unit} (the cap) the '
        f'residuals of the wanted eigenpairs are '
        f'{np.array2string(residuals, precision=2)}, relative '
        f'{np.array2string(relative, precision=2)} (tol={tol:g}); '
        'raise the cap (num_iters), loosen tol, or use float64.',
        ConvergenceWarning, stacklevel=3)
  eigvecs = None
  if vectors:
    eigvecs = space_lib.combinations(space, state.basis,
                                     s[:, order].astype(dtype))
  return EigshResult(theta[order], eigvecs, residuals, relative, total,
                     bool(converged), tol, restarts, breakdowns)


def _next_chunk(history, j: int, tol: float) -> int:
  """Products to run before the next check: the residuals' recent rate of
  decrease, extrapolated to the tolerance (they fall about geometrically)."""
  if tol <= 0:
    return max(4, j)
  if len(history) >= 2:
    (t0, r0), (t1, r1) = history[-2], history[-1]
    slope = (r1 - r0) / max(t1 - t0, 1)
    if slope < 0 and r1 > 0:
      return int(np.clip(math.ceil(0.8 * r1 / -slope), 1, max(4, j)))
  return max(2, j // 2)
