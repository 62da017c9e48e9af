"""Deflated power iteration (PyHessian's method), for comparison with Lanczos."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis.lanczos.core import (Matvec, as_operator, flat_matvec,
                                   orthogonalize, vector_dtype)
from dynamics.types import PyTree


@functools.partial(jax.jit, static_argnames=('max_iters', 'tol', 'dtype'))
def _power_jit(op, params_like, key, found, *, max_iters, tol, dtype):
  """PyHessian's power iteration for one eigenpair, deflating ``found`` rows."""
  dtype = np.dtype(dtype)
  n, matvec = flat_matvec(op, params_like, dtype)
  v0 = jax.random.normal(key, (n,), dtype)

  def cond(carry):
    it, _, _, done, _ = carry
    return (it < max_iters) & ~done

  def body(carry):
    it, v, eig, _, nonfinite_at = carry
    v = orthogonalize(v, found)
    v = v / jnp.linalg.norm(v)
    hv = matvec(v)
    finite = jnp.all(jnp.isfinite(hv))
    new_eig = jnp.vdot(hv, v)
    converged = (it > 0) & (jnp.abs(eig - new_eig) / (jnp.abs(eig) + 1e-6) < tol)
    v = hv / jnp.linalg.norm(hv)
    nonfinite_at = jnp.where(finite, nonfinite_at, it)
    return it + 1, v, new_eig, converged | ~finite, nonfinite_at

  carry = (jnp.zeros((), jnp.int32), v0, jnp.zeros((), dtype),
           jnp.zeros((), bool), -jnp.ones((), jnp.int32))
  it, v, eig, _, nonfinite_at = jax.lax.while_loop(cond, body, carry)
  return it, eig, v, nonfinite_at


def run_power_iteration(matvec: Matvec, params_like: PyTree, k: int, *,
                        key: jax.Array, max_iters: int = 100, tol: float = 1e-3,
                        dtype: Any = None) -> tuple[np.ndarray, jax.Array, int]:
  """Top-``k`` (by magnitude) eigenpairs by deflated power iteration.

  This is PyHessian's ``eigenvalues`` routine: for each eigenpair, iterate
  ``v <- A v / ||A v||`` keeping ``v`` orthogonal to the eigenvectors found so
  far, until the Rayleigh quotient changes by less than ``tol`` relative.

  Returns:
    ``(eigvals (k,), eigvecs (k, n) flat rows, num_matvecs)`` in discovery
    order (decreasing magnitude).
  """
  dtype = vector_dtype(params_like, dtype)
  n = ravel_pytree(params_like)[0].size
  found = jnp.zeros((k, n), dtype)
  eigvals, total = [], 0
  for i, sub in enumerate(jax.random.split(key, k)):
    it, eig, v, nonfinite_at = _power_jit(
        as_operator(matvec), params_like, sub, found, max_iters=max_iters,
        tol=tol, dtype=dtype.name)
    if int(nonfinite_at) >= 0:
      raise FloatingPointError(
          f'non-finite operator (Hessian-vector) product at power iteration '
          f'{int(nonfinite_at) + 1} for eigenvalue {i + 1}; stopping.')
    total += int(it)
    found = found.at[i].set(v)
    eigvals.append(float(eig))
  return np.asarray(eigvals), found, total
