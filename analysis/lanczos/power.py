"""Deflated power iteration (PyHessian's method), with a residual test."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lanczos import core, space as space_lib, trees
from analysis.lanczos.eigsh import (ConvergenceWarning, default_max_matvecs,
                                    default_tol)
from dynamics.types import PyTree


@functools.partial(jax.jit, static_argnames=('param_dtypes',),
                   donate_argnums=(2,))
def _power(op, key, found, num_found, max_iters, tol, mask, use_mask, *,
           param_dtypes):
  """One eigenpair, deflating the first ``num_found`` rows of ``found``;
  stores it in row ``num_found``. Every bound is traced: compiled once."""
  rows = jax.tree.leaves(found)[0].shape[0]
  like = jax.tree.map(lambda f: f[0], found)
  dtype = jax.tree.leaves(like)[0].dtype
  treedef = jax.tree.structure(like)

  def deflate(x):
    return core.orthogonalize(found, x, num_found, rows)[1]

  def apply(v):
    arg = jax.tree.unflatten(treedef, [x.astype(d) for x, d in
                                       zip(jax.tree.leaves(v), param_dtypes)])
    return trees.cast(op(arg), dtype)

  def cond(c):
    it, _, _, res, bad = c[0], c[1], c[2], c[3], c[4]
    return (it < max_iters) & (res > 0) & (bad < 0)

  def body(c):
    it, v, _, _, bad = c
    v = deflate(v)
    v = trees.scale(1 / trees.norm(v), v)
    hv = deflate(apply(v))
    theta = trees.dot(v, hv)
    r = trees.norm(trees.axpy(-theta, v, hv))
    res = jnp.where(r <= tol * jnp.abs(theta), 0.0, r)
    bad = jnp.where(jnp.isfinite(r), bad, it)
    return it + 1, trees.scale(1 / trees.norm(hv), hv), theta, res, bad

  v0 = jax.tree.map(lambda x, m: x * jnp.where(use_mask, m.astype(dtype), 1),
                    trees.hashed_signs(trees.key_seed(key, num_found), like, dtype),
                    mask)
  one = jnp.ones((), dtype)
  it, v, theta, res, bad = jax.lax.while_loop(
      cond, body, (jnp.int32(0), v0, one, one, jnp.int32(-1)))
  # The last Rayleigh quotient's vector (before the final product): re-deflate.
  v = deflate(v)
  v = trees.scale(1 / trees.norm(v), v)
  found = jax.tree.map(lambda f, x: f.at[num_found].set(x), found, v)
  return found, it, theta, res == 0, bad


def run_power_iteration(matvec: core.Matvec, params_like: PyTree, k: int, *,
                        key: jax.Array, max_iters: int | None = None,
                        tol: float | None = None, dtype: Any = None,
                        mask: PyTree | None = None,
                        name: str = 'power_iteration'):
  """Top-``k`` (by magnitude) eigenpairs by deflated power iteration.

  PyHessian's ``eigenvalues`` routine, stopped on the residual instead of the
  change of the eigenvalue: for each eigenpair, ``v <- P A v / ||P A v||``
  with ``P`` projecting out the eigenvectors found so far, until
  ``||P A v - theta v|| <= tol |theta|`` (`default_tol` of the dtype) or
  ``max_iters`` products (default ``10 x default_max_matvecs(1, dim)``); warns
  (`ConvergenceWarning`) when an eigenpair hits the cap.

  ``mask`` (a 0/1 pytree) restricts the start vectors to a block.

  Returns:
    ``(eigvals (k,), eigvecs (list of k pytrees), num_matvecs, converged
    (k,))``
    in discovery order (decreasing magnitude).
  """
  dtype = trees.vector_dtype(params_like, dtype)
  n = trees.size(params_like)
  tol = default_tol(dtype) if tol is None else float(tol)
  if max_iters is None:
    max_iters = 10 * default_max_matvecs(1, n)
  rows = core.basis_rows(k, n)
  space = space_lib.make_space(matvec, params_like, dtype, mask)
  found = trees.zeros_stack(rows, space.like, dtype)
  eigvals, converged, total = [], [], 0
  for i in range(k):
    found, it, theta, ok, bad = _power(
        space.op, key, found, np.int32(i), np.int32(max_iters),
        np.asarray(tol, dtype), space.like if mask is None else space.mask,
        np.bool_(mask is not None), param_dtypes=space.param_dtypes)
    if int(bad) >= 0:
      raise FloatingPointError(
          f'non-finite operator (Hessian-vector) product at power iteration '
          f'{int(bad) + 1} for eigenvalue {i + 1}; stopping.')
    total += int(it)
    eigvals.append(float(theta))
    converged.append(bool(ok))
  if tol > 0 and not all(converged):
    warnings.warn(
        f'{name} did not converge: eigenpairs '
        f'{[i + 1 for i, c in enumerate(converged) if not c]} hit the cap of '
        f'{max_iters} products each (relative residual > tol={tol:g}); '
        f'{total} products in all. Lanczos (top_eigenpairs) converges in far '
        'fewer.', ConvergenceWarning, stacklevel=3)
  vectors = [space_lib.to_params(space, jax.tree.map(lambda f, i=i: f[i],
                                                     found)) for i in range(k)]
  return np.asarray(eigvals), vectors, total, np.asarray(converged)
