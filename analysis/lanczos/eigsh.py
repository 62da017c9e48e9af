r"""Extreme eigenpairs of a symmetric operator, converged or said loudly.

`eigsh` runs Lanczos with full reorthogonalization (`analysis.lanczos.core`)
and checks, every few steps, the Lanczos estimates of the residuals of the
wanted Ritz pairs :math:`(\theta_i, y_i)`, :math:`\beta_j |s_{j,i}|` (with
the couplings dropped at breakdowns added in quadrature), against

.. math::
   \|A y_i - \theta_i y_i\|
   \le \mathrm{tol} \cdot \max(|\theta_i|, \epsilon^{2/3} \max_l |\theta_l|),

with a tolerance that fits the dtype (`default_tol`) and a cap on operator
products that grows with ``k`` and the dimension (`default_max_matvecs`).
When the basis is full it is thick-restarted (Wu & Simon, 2000) from the best
Ritz vectors, so memory stays at ``basis_size`` vectors whatever the cap.

What is reported is measured, not estimated: the residuals are the true
:math:`\|Ay_i - \theta_i y_i\|` (one product per pair at the end), and
``converged`` is decided on them, so a ``tol`` below the dtype's rounding
is never met (it warns up front and at the end). A Krylov space holds one
copy of each eigenvalue: for ``k >= 2``, once the pairs converge a fresh
Lanczos block orthogonal to the basis runs until its extreme Ritz value is
resolved, and again while it finds a wanted one (a missed copy), so repeated
eigenvalues come with their multiplicity; a cap that stops this check warns.
A run that hits its cap unconverged warns (`ConvergenceWarning`) with the
residuals and the products spent.

By default the whole run (checks, thick restarts, deflation blocks, true
residuals) is one compiled call (`analysis.lanczos.device`) and the host
reads its results once, at the end, then decides the warnings; the Ritz
vectors are formed on the device. ``driver='host'`` runs the same checks
from the host between compiled chunks (`analysis.lanczos.host`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lanczos import core, device as device_lib, host as host_lib
from analysis.lanczos import space as space_lib, trees
from dynamics import progress as progress_lib
from dynamics.types import PyTree

# The smallest relative residual a dtype is asked for: PRECISION * eps (a
# tol below it warns); residuals below ROUNDING * eps * ||A|| are rounding.
PRECISION = 4
ROUNDING = 10

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
    residual_matvecs: the products spent measuring the true residuals.
    verified: a fresh Lanczos block orthogonal to the converged pairs found
      no wanted eigenvalue they missed (copies of a repeated eigenvalue);
      True where the check was not asked for (``verify=False``).
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
  residual_matvecs: int = 0
  verified: bool = True


def eigsh(matvec: core.Matvec, params_like: PyTree, k: int, *,
          key: jax.Array, which: str = 'LA', tol: float | None = None,
          max_matvecs: int | None = None, basis_size: int | None = None,
          dtype: Any = None, init_vector: PyTree | None = None,
          min_iters: int = 1, vectors: bool = True, progress: bool = False,
          mask: PyTree | None = None, dim: int | None = None,
          name: str = 'eigsh', unit: str = 'products',
          verify: bool | None = None,
          driver: str | None = None) -> EigshResult:
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
    tol: relative residual to stop at (None: `default_tol` of the dtype, or
      of the parameters' when less precise: a float32 operator's residuals
      stay at float32's rounding whatever the vectors; 0: run to the cap
      without checking).
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
    verify: once the ``k`` pairs converge, run a fresh Lanczos block
      orthogonal to the basis until its extreme Ritz value converges, and
      repeat while that finds a wanted value: a single Krylov space holds
      one copy of each eigenvalue (exactly), so copies of a repeated one
      are found only so. None: for ``k >= 2`` (for ``k = 1`` a copy does
      not change the answer) with ``tol > 0`` (it starts once the pairs
      converge). Warns when the cap stops the check.
    driver: 'device' (one compiled call for the whole run, one transfer
      back: `analysis.lanczos.device`) or 'host' (compiled chunks, the
      decisions on the host between them: `analysis.lanczos.host`, the
      reference). None: 'device', or 'host' when ``progress`` (a bar
      needs the host between chunks).

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
  driver = ('host' if progress else 'device') if driver is None else driver
  if driver not in ('device', 'host'):
    raise ValueError(f"driver must be 'device' or 'host', got {driver!r}")
  dtype = trees.vector_dtype(params_like, dtype)
  n = trees.size(params_like) if dim is None else int(dim)
  if n == 0:
    raise ValueError('the operator acts on an empty parameter set')
  if not 1 <= k <= n:
    raise ValueError(f'k={k} must be between 1 and the dimension ({n})')
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
  use_v0 = init_vector is not None
  state = core.start(
      space.like, key,
      space_lib.to_space(space, init_vector) if use_v0 else space.like,
      np.bool_(use_v0), space.like if mask is None else space.mask,
      np.bool_(mask is not None), rows=rows, dtype=dtype.name,
      shardings=space.shardings)
  eps = float(np.finfo(dtype).eps)
  # The operator's own precision limits the residuals as much as the
  # vectors' (float64 vectors on a float32 operator).
  low = max([jnp.dtype(x.dtype) for x in jax.tree.leaves(params_like)
             if jnp.issubdtype(x.dtype, jnp.floating)] + [dtype],
            key=lambda d: float(jnp.finfo(d).eps))
  eps_op = float(jnp.finfo(low).eps)
  # The default tolerance is the operator's, when it is the less precise.
  asked = tol is not None
  tol = default_tol(low) if tol is None else float(tol)
  if asked and 0 < tol < PRECISION * eps_op:
    warnings.warn(
        f'{name}: tol={tol:g} is below what {low.name} can deliver '
        f'(residuals are measured, and rounding leaves ~{PRECISION} eps = '
        f'{PRECISION * eps_op:.1e} relative): the run will not be reported '
        f'converged; use float64 or tol >= {PRECISION * eps_op:.1e}.',
        ConvergenceWarning, stacklevel=3)
  # The check starts once the pairs converge: never with tol = 0 (a fixed
  # number of products, no test), where it is not run, nor warned about.
  verify = k >= 2 and tol > 0 if verify is None else bool(verify)
  # A cold start needs ~3k products before k pairs can converge; a warm
  # start (the previous eigenvector) may need only a few.
  chunk = max(min_iters, k + 2 if use_v0 else 3 * k + 5, 4)
  options = dict(k=k, cap=cap, limit=limit, tol=tol, min_iters=min_iters,
                 which=which, verify=verify, chunk=chunk, vectors=vectors)
  if driver == 'device':
    out = device_lib.solve(space, state, **options)
  else:
    bar = progress_lib.bar(cap, f'{name} {unit}', enabled=progress,
                           leave=False)
    out = host_lib.run(space, state, bar=bar, **options)
    bar.close()
  if out['bad'] >= 0:
    raise FloatingPointError(
        f'{name}: non-finite operator product ({unit[:-1]} {out["bad"] + 1}):'
        ' the loss or its curvature is NaN/Inf at these parameters and '
        'batches; stopping.')
  theta, residuals, total = out['theta'], out['residuals'], out['total']
  complete, verified = out['complete'], out['verified']
  floor = eps ** (2 / 3) * out['theta_max']
  scale = np.maximum(np.maximum(np.abs(theta), floor),
                     np.finfo(np.float64).tiny)
  relative = residuals / scale
  rounding = ROUNDING * eps_op * max(out['anorm'], out['theta_max'])
  each = relative <= tol
  if complete:
    each |= residuals <= rounding
  converged = bool(np.all(each)) and (tol > 0 or complete)
  if not converged and tol > 0:
    limited = bool(np.all(residuals[~each] <= rounding))
    if limited:
      why = (f'they are at {low.name}\'s rounding level (~{ROUNDING} eps '
             f'||A|| = {rounding:.1e}): tol is below what {low.name} can '
             'deliver for these eigenvalues; use float64 or loosen tol.')
    else:
      why = 'raise the cap (num_iters), loosen tol, or use float64.'
    warnings.warn(
        f'{name} did not converge: after {total} {unit} '
        f'{"(the cap) " if total >= cap else ""}the true '
        f'residuals of the wanted eigenpairs are '
        f'{np.array2string(residuals, precision=2)}, relative '
        f'{np.array2string(relative, precision=2)} (tol={tol:g}); ' + why,
        ConvergenceWarning, stacklevel=3)
  elif verify and not verified and n > k:
    warnings.warn(
        f'{name}: the {k} eigenpairs converged, but the check for missed '
        f'copies of repeated eigenvalues (a fresh Lanczos block orthogonal '
        f'to them) did not finish within the cap of {cap} {unit}: a repeated '
        'eigenvalue may be missing copies; raise the cap (num_iters).',
        ConvergenceWarning, stacklevel=3)
  return EigshResult(theta, out['eigvecs'], residuals, relative, total,
                     converged, tol, out['restarts'], out['breakdowns'],
                     len(theta), bool(verified or not verify))
