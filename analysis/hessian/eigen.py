r"""Extreme Hessian eigenpairs: Lanczos (`top_eigenpairs`) and, for
comparison with PyHessian, deflated power iteration (`power_iteration`).

Eigenvalues are sorted in descending (algebraic) order; eigenvectors are
returned as a list of pytrees shaped like ``params``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import lanczos as lz
from analysis.hessian import operators
from dynamics.types import Batch, LossFn, PyTree


def _check_k(k: int, num_iters: int, dim: int) -> None:
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if k > dim:
    raise ValueError(f'k={k} exceeds the number of parameters ({dim})')
  if k > min(num_iters, dim):
    raise ValueError(
        f'k={k} is larger than the number of Lanczos iterations '
        f'(num_iters={num_iters}): m iterations give at most m eigenvalues; '
        f'use num_iters >= 2 * k for accurate ones')


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  """Indices of the ``k`` wanted Ritz values, in descending algebraic order."""
  if which == 'LA':
    idx = np.arange(k)
  elif which == 'SA':
    idx = np.arange(len(theta) - k, len(theta))
  else:
    idx = np.sort(np.argsort(-np.abs(theta), kind='stable')[:k])
  return idx


def top_eigenpairs(loss_fn: LossFn, params: PyTree, batches: Iterable[Batch],
                   k: int = 5, *, num_iters: int | None = None,
                   tol: float | None = 1e-5, key: jax.Array | None = None,
                   dtype: Any = None, which: str = 'LA', mask: Any = None,
                   kind: str = 'hessian', model_fn: Callable | None = None,
                   output_loss_fn: Callable | None = None,
                   init_vector: PyTree | None = None, min_iters: int = 1,
                   return_info: bool = False, progress: bool = False):
  r"""Top-``k`` Hessian eigenpairs by Lanczos with full reorthogonalization.

  Runs Lanczos on :math:`H` (see `analysis.lanczos.lanczos`) until the ``k``
  wanted Ritz pairs :math:`(\theta_i, y_i)` have residual
  :math:`\|H y_i - \theta_i y_i\| = \beta_m |s_{m,i}| \le`
  ``tol`` :math:`\cdot |\theta_i|`, or after ``num_iters`` HVPs.

  Args:
    loss_fn: ``(params, batch) -> scalar``.
    params: point at which the Hessian is taken.
    batches: list of equally-shaped batches (the loss is their mean).
    k: number of eigenpairs.
    num_iters: maximum HVPs (default ``max(30, 3 k)``; capped at the
      dimension).
    tol: relative residual at which to stop (None: always ``num_iters``).
    key: PRNG key of the random start vector.
    dtype: Lanczos dtype (``jnp.float64`` for float32 params needs x64).
    which: 'LA' (largest algebraic, the default), 'SA' (smallest algebraic:
      the most negative curvature) or 'LM' (largest magnitude).
    mask: restrict to a block of parameters (see `block_mask`).
    kind: 'hessian' or 'ggn' (then pass ``model_fn``, ``output_loss_fn``).
    model_fn, output_loss_fn: see `hvp_fn`.
    init_vector: start vector (pytree like ``params``), e.g. the previous top
      eigenvector to warm-start a training-time probe.
    min_iters: never stop before this many HVPs.
    return_info: also return a dict with ``num_hvps``, ``residuals`` and
      ``converged``.
    progress: show a progress bar over HVPs.

  Returns:
    ``(eigvals (k,), eigvecs)`` with eigenvalues descending and eigenvectors a
    list of ``k`` unit-norm pytrees like ``params`` (zero outside ``mask``);
    plus ``info`` if ``return_info``.

  Raises:
    ValueError: ``k`` larger than ``num_iters`` or the dimension, or an empty
      mask. FloatingPointError: a non-finite HVP (the iteration is named).

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> vals, vecs = top_eigenpairs(loss, jnp.zeros(4), [jnp.arange(4.)], k=2)
    >>> np.round(np.asarray(vals), 5)
    array([3., 2.], dtype=float32)
  """
  op = operators.make_operator(loss_fn, params, batches, mask=mask, kind=kind,
                               model_fn=model_fn, output_loss_fn=output_loss_fn)
  num_iters = max(30, 3 * k) if num_iters is None else num_iters
  _check_k(k, num_iters, op.dim)
  if init_vector is not None and mask is not None:
    init_vector = ravel_pytree(init_vector)[0][
        operators.selected_index(params, mask)]
  with lz.progress_bar(min(num_iters, op.dim), 'Lanczos HVPs', progress):
    run = lz.run_lanczos(op.matvec, op.like, num_iters,
                         key=operators.default_key(key), dtype=dtype,
                         init_vector=init_vector, tol=tol, num_wanted=k,
                         which=which, min_iters=min_iters, progress=progress)
  theta, s = lz.tridiagonal_eigh(run.alphas, run.betas)
  if k > len(theta):
    raise ValueError(f'only {len(theta)} Lanczos iterations ran; k={k}')
  idx = _select(theta, k, which)
  vecs = lz.ritz_vectors(run.basis, s[:, idx])
  eigvecs = [op.to_params(v) for v in vecs]
  eigvals = jnp.asarray(theta[idx], run.basis.dtype)
  if not return_info:
    return eigvals, eigvecs
  residuals = run.beta_last * np.abs(s[-1, idx])
  converged = tol is not None and np.all(residuals <= tol * np.abs(theta[idx]))
  info = {'num_hvps': run.num_matvecs, 'residuals': residuals,
          'converged': bool(converged)}
  return eigvals, eigvecs, info


def power_iteration(loss_fn: LossFn, params: PyTree,
                    batches: Iterable[Batch], k: int = 1, *,
                    max_iters: int = 100, tol: float = 1e-3,
                    key: jax.Array | None = None, dtype: Any = None,
                    mask: Any = None, return_info: bool = False):
  r"""Top-``k`` (by magnitude) eigenpairs by deflated power iteration.

  PyHessian's method, for comparison with `top_eigenpairs`: for each
  eigenpair, :math:`v \leftarrow Hv / \|Hv\|` with ``v`` kept orthogonal to
  the eigenvectors already found, stopping when the Rayleigh quotient moves
  by less than ``tol`` relative (or after ``max_iters`` HVPs). It converges
  at rate :math:`|\lambda_{i+1}/\lambda_i|` per HVP, so clustered eigenvalues
  take many HVPs and its error is about ``tol``, not machine precision.

  Args:
    loss_fn, params, batches, key, dtype, mask: as in `top_eigenpairs`.
    k: number of eigenpairs.
    max_iters: HVP budget per eigenpair.
    tol: relative change of the eigenvalue estimate at which to stop.
    return_info: also return ``{'num_hvps': ...}``.

  Returns:
    ``(eigvals (k,), eigvecs)``, sorted descending, like `top_eigenpairs`.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> vals, _ = power_iteration(loss, jnp.zeros(3), [jnp.array([1., 2., 4.])],
    ...                           tol=1e-8, max_iters=200)
    >>> np.round(np.asarray(vals), 4)
    array([4.], dtype=float32)

  References:
    Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian".
  """
  op = operators.make_operator(loss_fn, params, batches, mask=mask)
  _check_k(k, op.dim, op.dim)
  vals, vecs, num_hvps = lz.run_power_iteration(
      op.matvec, op.like, k, key=operators.default_key(key),
      max_iters=max_iters, tol=tol, dtype=dtype)
  order = np.argsort(-vals, kind='stable')
  eigvals = jnp.asarray(vals[order], vecs.dtype)
  eigvecs = [op.to_params(vecs[i]) for i in order]
  if return_info:
    return eigvals, eigvecs, {'num_hvps': num_hvps}
  return eigvals, eigvecs
