r"""Extreme curvature eigenpairs: Lanczos (`top_eigenpairs`) and, for
comparison with PyHessian, deflated power iteration (`power_iteration`).

Both stop on a residual tolerance that fits the dtype
(`analysis.lanczos.default_tol`: 1e-5 relative in float32, 1e-9 in float64)
and warn (`analysis.lanczos.ConvergenceWarning`) when their cap, which grows
with ``k`` and the number of parameters, is reached first. Eigenvalues are
sorted in descending (algebraic) order; eigenvectors are returned as a list
of pytrees shaped like the parameters. Both take an `Operator`
(`analysis.hessian.curvature`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp  # pylint: disable=unused-import (examples)
import numpy as np

from analysis import lanczos as lz
from analysis.hessian import operators
from analysis.hessian.operators import Operator, curvature  # pylint: disable=unused-import (examples)
from analysis.lanczos import trees
from dynamics.types import PyTree


def top_eigenpairs(op: Operator, k: int = 5, *,
                   num_iters: int | None = None, tol: float | None = None,
                   key: jax.Array | None = None, dtype: Any = None,
                   which: str = 'LA', init_vector: PyTree | None = None,
                   min_iters: int = 1, basis_size: int | None = None,
                   return_info: bool = False, progress: bool = False,
                   driver: str | None = None):
  r"""Top-``k`` curvature eigenpairs by Lanczos with full reorthogonalization.

  Runs Lanczos on the operator :math:`C` (`curvature`: the Hessian, the GGN,
  a Fisher; whole or one block) until the ``k`` wanted Ritz pairs
  :math:`(\theta_i, y_i)` have residuals

  .. math::
     \|C y_i - \theta_i y_i\| \le \mathrm{tol} \cdot |\theta_i|,

  which bounds each eigenvalue's error by :math:`\mathrm{tol}\,|\theta_i|`
  (typically :math:`(\mathrm{tol}\,\theta_i)^2/\mathrm{gap}`). The loop is
  compiled once per operator and parameter shapes and reused for every
  ``k``, ``num_iters`` and ``tol`` (see `analysis.lanczos.eigsh`).

  Args:
    op: the `Operator` (`curvature`, `run_curvature`).
    k: number of eigenpairs.
    num_iters: cap on HVPs (None: `analysis.lanczos.default_max_matvecs`,
      ``40 + 20 k + 10 log2(n)``).
    tol: relative residual at which to stop (None: the dtype's default; 0:
      run ``num_iters`` HVPs without checking).
    key: PRNG key of the random start vector.
    dtype: Lanczos dtype (``jnp.float64`` for float32 params needs x64).
    which: 'LA' (largest algebraic, the default), 'SA' (smallest algebraic:
      the most negative curvature) or 'LM' (largest magnitude).
    init_vector: start vector (pytree like ``params``), e.g. the previous top
      eigenvector to warm-start a training-time probe.
    min_iters: never stop before this many HVPs.
    basis_size: Lanczos vectors kept in memory (None: up to 128; beyond it
      the basis is thick-restarted).
    return_info: also return a dict with ``num_hvps``, ``residuals`` (the
      true :math:`\|Cy - \theta y\|`, measured with ``residual_hvps``
      more HVPs), ``relative_residuals`` (each eigenpair converged where it
      is <= ``tol``), ``converged`` (all of them), ``tol``, ``restarts`` and
      ``multiplicity_checked`` (for ``k >= 2``: a fresh Lanczos block
      orthogonal to the pairs found no copy they missed).
    progress: show a progress bar over HVPs.
    driver: 'device' (the default: the whole loop in one compiled call, one
      read back) or 'host' (compiled chunks, decisions on the host between
      them: smaller programs that compile faster, for a one-off first call
      on a CPU); see `analysis.lanczos.eigsh`.

  Returns:
    ``(eigvals (k,), eigvecs)`` with eigenvalues descending and eigenvectors a
    list of ``k`` unit-norm pytrees like ``op.like`` (zero outside its block);
    plus ``info`` if ``return_info``.

  Raises:
    ValueError: ``k`` outside ``[1, n]`` or above ``num_iters``.
    FloatingPointError: a non-finite HVP (the iteration is named).

  Warns:
    analysis.lanczos.ConvergenceWarning: the cap was reached first (the
    message gives the residuals and HVPs spent; ``info['converged']`` is
    False).

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> op = curvature('hessian', jnp.zeros(4), [jnp.arange(4.)], loss_fn=loss)
    >>> vals, vecs = top_eigenpairs(op, k=2)
    >>> np.round(np.asarray(vals), 5)
    array([3., 2.], dtype=float32)
  """
  out = lz.eigsh(op.matvec, op.like, k, key=operators.default_key(key),
                 which=which, tol=tol, max_matvecs=num_iters,
                 basis_size=basis_size, dtype=dtype, init_vector=init_vector,
                 min_iters=min_iters, progress=progress, mask=op.mask,
                 dim=op.dim, name='top_eigenpairs', unit='HVPs',
                 driver=driver)
  dtype = trees.vector_dtype(op.like, dtype)
  eigvals = jax.device_put(np.asarray(out.eigvals, dtype))
  eigvecs = [trees.cast_like(v, op.like) for v in out.eigvecs]
  if not return_info:
    return eigvals, eigvecs
  info = {'num_hvps': out.num_matvecs, 'residuals': out.residuals,
          'relative_residuals': out.relative, 'converged': out.converged,
          'tol': out.tol, 'restarts': out.restarts,
          'residual_hvps': out.residual_matvecs,
          'multiplicity_checked': out.verified}
  return eigvals, eigvecs, info


def power_iteration(op: Operator, k: int = 1, *,
                    max_iters: int | None = None, tol: float | None = None,
                    key: jax.Array | None = None, dtype: Any = None,
                    return_info: bool = False):
  r"""Top-``k`` (by magnitude) eigenpairs by deflated power iteration.

  PyHessian's method, for comparison with `top_eigenpairs`: for each
  eigenpair, :math:`v \leftarrow PCv / \|PCv\|` with :math:`P` projecting
  out the eigenvectors already found. PyHessian stops when the Rayleigh
  quotient moves by less than 1e-3 relative, which says little about its
  error; here it stops on the residual,
  :math:`\|PCv - \theta v\| \le \mathrm{tol}\,|\theta|`, or after
  ``max_iters`` HVPs per eigenpair (default ``10 x`` Lanczos' cap for
  ``k = 1``), and warns then. It converges at rate
  :math:`|\lambda_{i+1}/\lambda_i|` per HVP: clustered eigenvalues take many.

  Args:
    op, key, dtype: as in `top_eigenpairs`.
    k: number of eigenpairs.
    max_iters: HVP cap per eigenpair.
    tol: relative residual at which to stop (None: the dtype's default).
    return_info: also return ``{'num_hvps', 'converged'}``.

  Returns:
    ``(eigvals (k,), eigvecs)``, sorted descending, like `top_eigenpairs`.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> op = curvature('hessian', jnp.zeros(3), [jnp.array([1., 2., 4.])],
    ...                loss_fn=loss)
    >>> vals, _ = power_iteration(op)
    >>> np.round(np.asarray(vals), 4)
    array([4.], dtype=float32)

  References:
    Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian".
  """
  if not 1 <= k <= op.dim:
    raise ValueError(f'k={k} must be between 1 and the dimension ({op.dim})')
  vals, vecs, num_hvps, converged = lz.run_power_iteration(
      op.matvec, op.like, k, key=operators.default_key(key),
      max_iters=max_iters, tol=tol, dtype=dtype, mask=op.mask)
  order = np.argsort(-vals, kind='stable')
  dtype = trees.vector_dtype(op.like, dtype)
  eigvals = jax.device_put(np.asarray(vals[order], dtype))
  eigvecs = [trees.cast_like(vecs[i], op.like) for i in order]
  if return_info:
    return eigvals, eigvecs, {'num_hvps': num_hvps,
                              'converged': bool(np.all(converged))}
  return eigvals, eigvecs
