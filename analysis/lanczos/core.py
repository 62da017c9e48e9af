"""Lanczos tridiagonalization on pytree operators, and its Ritz pairs.

An operator is any symmetric linear map ``matvec(v) -> Av`` on pytrees shaped
like some ``params_like``. The solver flattens the pytree once (inside its
trace) and runs all of its iterations in one jitted ``lax.while_loop``, so a
call costs one dispatch and the operator is traced once (see the package
docstring for passing operators as `jax.tree_util.Partial`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from dynamics.types import PyTree

Matvec = Callable[[PyTree], PyTree]


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


class LanczosRun(NamedTuple):
  """`LanczosResult` plus what eigen-solvers need to bound their errors."""
  alphas: np.ndarray
  betas: np.ndarray
  basis: jax.Array | None
  beta_last: float      # ||r_m||: Ritz residuals are beta_last * |S[m-1, i]|.
  num_matvecs: int      # Operator applications performed (= m).
  restarted: bool       # Whether an invariant subspace forced a restart.


def as_operator(matvec: Matvec) -> Partial:
  """Wraps ``matvec`` as a `Partial` so that it can cross a `jax.jit` boundary."""
  return matvec if isinstance(matvec, Partial) else Partial(matvec)


def vector_dtype(params_like: PyTree, dtype: Any) -> np.dtype:
  """Lanczos vectors' dtype: ``dtype`` if given, else the parameters' (>= f32)."""
  if dtype is None:
    flat, _ = ravel_pytree(params_like)
    dtype = jnp.promote_types(flat.dtype, jnp.float32)
  dtype = np.dtype(dtype)
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError(
        'dtype=float64 needs 64-bit JAX: wrap the call in '
        '`with jax.enable_x64(True):` or set JAX_ENABLE_X64=1.')
  return dtype


def flat_matvec(op: Partial, params_like: PyTree, dtype: np.dtype):
  """Returns (n, matvec on flat vectors of ``dtype``); flattens once per trace."""
  flat_like, unravel = ravel_pytree(params_like)

  def matvec(x: jax.Array) -> jax.Array:
    y, _ = ravel_pytree(op(unravel(x.astype(flat_like.dtype))))
    return y.astype(dtype)

  return flat_like.size, matvec


def orthogonalize(w: jax.Array, basis: jax.Array) -> jax.Array:
  """Classical Gram-Schmidt, twice ("twice is enough"); zero rows are inert."""
  for _ in range(2):
    w = w - basis.T @ (basis @ w)
  return w


def _tick(_) -> None:
  if _PROGRESS['bar'] is not None:
    _PROGRESS['bar'].update(1)


# The progress bar updated from inside jitted loops (set by `progress_bar`).
_PROGRESS: dict[str, Any] = {'bar': None}


class progress_bar:  # pylint: disable=invalid-name
  """Context manager showing a tqdm bar ticked once per operator application."""

  def __init__(self, total: int, desc: str, enabled: bool = True):
    self.total, self.desc, self.enabled = total, desc, enabled

  def __enter__(self):
    if self.enabled:
      import tqdm  # pylint: disable=g-import-not-at-top
      _PROGRESS['bar'] = tqdm.tqdm(total=self.total, desc=self.desc, leave=False)
    return self

  def __exit__(self, *exc):
    jax.effects_barrier()
    if _PROGRESS['bar'] is not None:
      _PROGRESS['bar'].close()
    _PROGRESS['bar'] = None


_WHICH = {'LA': 0, 'SA': 1, 'LM': 2}


def _ritz_residual_check(alphas, betas, beta, j, num_wanted, which, tol, *,
                         num_iters):
  """Whether the wanted Ritz values of T_{j+1} have residual <= tol * |theta|.

  T is padded to the static size with decoupled diagonal entries placed where
  they cannot be selected (below the Gershgorin interval for 'LA', above for
  'SA', at zero for 'LM'). ``which``, ``num_wanted`` and ``tol`` are traced,
  so one compilation serves every choice of them.
  """
  idx = jnp.arange(num_iters)
  active = idx <= j
  off = jnp.where(idx[:-1] < j, betas[:-1], 0.0)
  radius = jnp.abs(jnp.concatenate([off, jnp.zeros(1, off.dtype)]))
  radius = radius + jnp.abs(jnp.concatenate([jnp.zeros(1, off.dtype), off]))
  big = jnp.finfo(alphas.dtype).max
  lo = jnp.min(jnp.where(active, alphas - radius, big))
  hi = jnp.max(jnp.where(active, alphas + radius, -big))
  spread = (hi - lo) + jnp.abs(lo) + jnp.abs(hi) + jnp.finfo(alphas.dtype).tiny
  pad = jnp.stack([lo - spread, hi + spread, jnp.zeros_like(lo)])[which]
  tri = (jnp.diag(jnp.where(active, alphas, pad)) + jnp.diag(off, 1)
         + jnp.diag(off, -1))
  theta, s = jnp.linalg.eigh(tri)
  residual = jnp.abs(beta * s[j])
  sort_key = jnp.stack([-theta, theta, -jnp.abs(theta)])[which]
  order = jnp.argsort(sort_key)
  ok = residual[order] <= tol * jnp.abs(theta[order])
  return jnp.all(ok | (idx >= num_wanted))


@functools.partial(
    jax.jit,
    static_argnames=('num_iters', 'reorthogonalize', 'dtype', 'store_basis'))
def _lanczos_jit(op, params_like, key, v0, tol, num_wanted, which, min_iters,
                 check, progress, *, num_iters, reorthogonalize, dtype,
                 store_basis):
  """Lanczos in one while_loop; stops early on convergence or a non-finite Av.

  Everything but the shapes is traced (tolerance, selection, whether to check
  convergence, progress ticks), so one compilation serves all uses of an
  operator with a given ``num_iters``.
  """
  dtype = np.dtype(dtype)
  n, matvec = flat_matvec(op, params_like, dtype)
  v0 = v0.astype(dtype)
  v0 = v0 / jnp.linalg.norm(v0)
  basis0 = jnp.zeros((num_iters if store_basis else 1, n), dtype)
  eps = jnp.finfo(dtype).eps

  def cond(carry):
    j, *_, done, _, _ = carry
    return (j < num_iters) & ~done

  def body(carry):
    (j, basis, v, v_prev, beta_prev, alphas, betas, anorm, key, _,
     nonfinite_at, restarted) = carry
    if store_basis:
      basis = basis.at[j].set(v)
    w = matvec(v)
    finite = jnp.all(jnp.isfinite(w))
    alpha = jnp.vdot(v, w)
    w = w - alpha * v - beta_prev * v_prev
    if reorthogonalize:
      w = orthogonalize(w, basis)
    beta = jnp.linalg.norm(w)
    anorm = jnp.maximum(anorm, jnp.abs(alpha) + beta + beta_prev)
    # An invariant Krylov subspace (beta at rounding level; the recurrence
    # only gets it to ~sqrt(eps) relative): restart with a fresh direction
    # orthogonal to the basis, so that repeated eigenvalues are found too.
    # Dropping a coupling beta moves eigenvalues by at most beta.
    breakdown = beta <= jnp.sqrt(eps) * anorm
    key, restart_key = jax.random.split(key)

    def restart():
      r = jax.random.normal(restart_key, (n,), dtype)
      if store_basis:
        r = orthogonalize(r, basis)
      return r / jnp.linalg.norm(r)

    v_next = jax.lax.cond(breakdown, restart, lambda: w / beta)
    beta = jnp.where(breakdown, jnp.zeros_like(beta), beta)
    restarted = restarted | (breakdown & (j + 1 < min(num_iters, n)))
    alphas = alphas.at[j].set(alpha)
    betas = betas.at[j].set(beta)
    converged = jax.lax.cond(
        check,
        functools.partial(_ritz_residual_check, num_iters=num_iters),
        lambda *_, **__: jnp.zeros((), bool),
        alphas, betas, beta, j, num_wanted, which, tol)
    done = ~finite | (converged & (j + 1 >= jnp.maximum(min_iters, num_wanted))
                      & ~restarted)
    nonfinite_at = jnp.where(finite, nonfinite_at, j)
    jax.lax.cond(progress, lambda: jax.debug.callback(_tick, j), lambda: None)
    return (j + 1, basis, v_next, v, beta, alphas, betas, anorm, key, done,
            nonfinite_at, restarted)

  zero = jnp.zeros((), dtype)
  carry = (jnp.zeros((), jnp.int32), basis0, v0, jnp.zeros_like(v0), zero,
           jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype), zero, key,
           jnp.zeros((), bool), -jnp.ones((), jnp.int32), jnp.zeros((), bool))
  out = jax.lax.while_loop(cond, body, carry)
  j, basis, *_, alphas, betas, _, _, _, nonfinite_at, restarted = out
  return j, alphas, betas, (basis if store_basis else None), nonfinite_at, restarted


def run_lanczos(matvec: Matvec, params_like: PyTree, num_iters: int, *,
                key: jax.Array, reorthogonalize: bool = True, dtype: Any = None,
                init_vector: PyTree | None = None, store_basis: bool = True,
                tol: float | None = None, num_wanted: int = 1,
                which: str = 'LA', min_iters: int = 1,
                progress: bool = False) -> LanczosRun:
  """`lanczos` with early stopping and the data needed for error bounds.

  Args:
    matvec, params_like, num_iters, key, reorthogonalize, dtype, init_vector:
      as in `lanczos`.
    store_basis: keep the Lanczos vectors (required for eigenvectors).
    tol: stop once each of the ``num_wanted`` Ritz pairs selected by
      ``which`` has residual norm ``||A y - theta y|| <= tol * |theta|`` (None:
      run ``num_iters``). Eigenvalue errors are then at most ``tol * |theta|``
      and typically ``(tol * theta)**2 / gap``.
    num_wanted: how many Ritz pairs the stopping rule watches.
    which: 'LA' (largest algebraic), 'SA' (smallest) or 'LM' (largest |theta|).
    min_iters: never stop before this many iterations.
    progress: tick the active `progress_bar` once per operator application.

  Returns:
    A `LanczosRun` truncated to the iterations performed.

  Raises:
    FloatingPointError: an operator application returned NaN or Inf; the
      message names the iteration.
  """
  if which not in ('LA', 'SA', 'LM'):
    raise ValueError(f"which must be 'LA', 'SA' or 'LM', got {which!r}")
  dtype = vector_dtype(params_like, dtype)
  n = ravel_pytree(params_like)[0].size
  if n == 0:
    raise ValueError('the operator acts on an empty parameter set')
  num_iters = int(min(num_iters, n))  # Beyond n the Krylov space is complete.
  if num_iters < 1:
    raise ValueError(f'num_iters must be >= 1, got {num_iters}')
  if store_basis is False and reorthogonalize:
    store_basis = True  # Full reorthogonalization needs the whole basis.
  key, init_key = jax.random.split(key)
  if init_vector is None:
    v0 = jax.random.normal(init_key, (n,), dtype)
  else:
    v0 = ravel_pytree(init_vector)[0]  # Flat: one signature for all starts.
  steps, alphas, betas, basis, nonfinite_at, restarted = _lanczos_jit(
      as_operator(matvec), params_like, key, v0,
      jnp.asarray(0.0 if tol is None else tol, dtype), num_wanted,
      _WHICH[which], min_iters, tol is not None, progress,
      num_iters=num_iters, reorthogonalize=reorthogonalize, dtype=dtype.name,
      store_basis=store_basis)
  nonfinite_at = int(nonfinite_at)
  if nonfinite_at >= 0:
    raise FloatingPointError(
        f'non-finite operator (Hessian-vector) product at Lanczos iteration '
        f'{nonfinite_at + 1} of {num_iters}: the loss or its curvature is '
        f'NaN/Inf at these parameters and batches; stopping.')
  m = int(steps)
  alphas_np = np.asarray(alphas, np.float64)
  betas_np = np.asarray(betas, np.float64)
  return LanczosRun(
      alphas=alphas_np[:m], betas=betas_np[:m - 1],
      basis=None if basis is None else basis[:m], beta_last=float(betas_np[m - 1]),
      num_matvecs=m, restarted=bool(restarted))


def lanczos(matvec: Matvec, params_like: PyTree, num_iters: int, *,
            key: jax.Array, reorthogonalize: bool = True, dtype: Any = None,
            init_vector: PyTree | None = None,
            return_basis: bool = True) -> LanczosResult:
  r"""Lanczos tridiagonalization of a symmetric operator on pytrees.

  With ``q_1 = v_0 / ||v_0||``, ``beta_0 = 0`` and for ``j = 1..m``:

  .. math::
     w = A q_j - \alpha_j q_j - \beta_{j-1} q_{j-1}, \quad
     \alpha_j = q_j^\top A q_j, \quad \beta_j = \|w\|, \quad
     q_{j+1} = w / \beta_j,

  so that ``Q_m^T A Q_m = T_m = tridiag(beta, alpha, beta)``. With
  ``reorthogonalize=True`` every ``w`` is re-orthogonalized against all previous
  ``q`` (classical Gram-Schmidt applied twice), which keeps ``Q_m`` orthonormal
  to working precision: no spurious copies of converged eigenvalues appear and
  the extreme eigenvalues converge to machine precision. When ``beta_j``
  vanishes (the Krylov space is invariant, e.g. for repeated eigenvalues) the
  iteration restarts from a random vector orthogonal to ``Q_j`` and records
  ``beta_j = 0``, so ``T_m`` becomes block-diagonal and multiplicities are
  found. The pytree is flattened once; all iterations run in one jitted loop.

  Args:
    matvec: symmetric linear operator on pytrees shaped like ``params_like``
      (ideally a `jax.tree_util.Partial`, see the module docstring).
    params_like: pytree fixing the vector space (shapes and dtypes).
    num_iters: Lanczos steps ``m`` (capped at the dimension).
    key: PRNG key for the start vector (and restarts).
    reorthogonalize: full reorthogonalization (stores the ``m x n`` basis).
    dtype: dtype of the Lanczos vectors and ``T`` (e.g. ``jnp.float64`` for
      float32 parameters; needs 64-bit JAX). Default: the parameters' dtype.
    init_vector: optional start vector (pytree), e.g. a previous eigenvector.
    return_basis: also return the Lanczos vectors.

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
  run = run_lanczos(matvec, params_like, num_iters, key=key,
                    reorthogonalize=reorthogonalize, dtype=dtype,
                    init_vector=init_vector, store_basis=return_basis)
  return LanczosResult(jnp.asarray(run.alphas), jnp.asarray(run.betas),
                       run.basis if return_basis else None)


def tridiagonal_eigh(alphas: Any, betas: Any) -> tuple[np.ndarray, np.ndarray]:
  """Eigenpairs of ``tridiag(betas, alphas, betas)``, eigenvalues descending.

  Returns:
    ``(theta (m,), s (m, m))`` in float64 with ``T s[:, i] = theta[i] s[:, i]``.
  """
  alphas = np.asarray(alphas, np.float64)
  betas = np.asarray(betas, np.float64)
  tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
  theta, s = np.linalg.eigh(tri)
  return theta[::-1], s[:, ::-1]


def ritz_vectors(basis: jax.Array, s: np.ndarray) -> jax.Array:
  """Ritz vectors ``Q_m^T s`` as rows ``(k, n)`` from a ``(m, k)`` block of s."""
  return jnp.asarray(s.T, basis.dtype) @ basis
