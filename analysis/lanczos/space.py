"""The vector space a solver works in: one flat vector, or the parameter pytree.

On one device the solvers flatten the parameters into a single vector: the
compiled loop then holds one array per quantity, not one per parameter
tensor, which cuts its compilation time several-fold (a transformer has
dozens of tensors). When the parameters are sharded over several devices the
solvers keep their pytree, so that every Lanczos vector (and the basis) is
laid out like the parameters (`analysis.lanczos.trees.stack_shardings`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from analysis.lanczos import trees
from dynamics.types import PyTree


class Space(NamedTuple):
  """A solver's vectors and operator.

  Attributes:
    op: the operator on the solver's vectors (a `Partial`).
    like: a vector of the space (a NumPy zero vector when flat).
    mask: the block's 0/1 vector in the same layout, or None.
    shardings: per-leaf layouts of stacked vectors (None on one device).
    param_dtypes: the dtypes ``op`` takes its input in, per leaf.
    dim: the dimension (of the block, with a mask).
    flat: whether vectors are flattened.
    params_like: the parameters' pytree.
  """
  op: Partial
  like: PyTree
  mask: PyTree | None
  shardings: tuple | None
  param_dtypes: tuple
  dim: int
  flat: bool
  params_like: PyTree


def _split(x: jax.Array, like: PyTree, cast: bool = True) -> PyTree:
  """A flat vector as a pytree like ``like`` (its shapes; its dtypes if
  ``cast``, else ``x``'s)."""
  leaves, treedef = jax.tree.flatten(like)
  sizes = [int(np.prod(np.shape(leaf), dtype=np.int64)) for leaf in leaves]
  parts = jnp.split(x, np.cumsum(sizes)[:-1]) if len(sizes) > 1 else [x]
  return jax.tree.unflatten(treedef, [
      p.reshape(np.shape(leaf)).astype(leaf.dtype if cast else x.dtype)
      for p, leaf in zip(parts, leaves)])


def _join(tree: PyTree, dtype: Any) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x).astype(dtype)
                          for x in jax.tree.leaves(tree)])


def _flat_apply(op, params_like, x):
  """``op`` on flat vectors (``ravel_pytree`` order)."""
  return _join(op(_split(x, params_like)), x.dtype)


@jax.jit
def unflatten(x: jax.Array, params_like: PyTree) -> PyTree:
  """A flat vector back to a pytree like ``params_like`` (``x``'s dtype)."""
  return _split(x, params_like, cast=False)


def host_flat(tree: PyTree, dtype: Any) -> np.ndarray:
  """A pytree as one flat NumPy vector (on the host: compiles nothing)."""
  return np.concatenate([np.ravel(np.asarray(x)).astype(dtype)
                         for x in jax.tree.leaves(tree)])


def make_space(matvec, params_like: PyTree, dtype: Any,
               mask: PyTree | None = None, dim: int | None = None) -> Space:
  """The solver's space for ``matvec`` on ``params_like`` (see the module)."""
  from analysis.lanczos import core  # pylint: disable=g-import-not-at-top
  dtype = np.dtype(dtype)
  op = core.as_operator(matvec)
  n = trees.size(params_like)
  dim = n if dim is None else int(dim)
  shardings = trees.stack_shardings(params_like)
  if shardings is not None:
    return Space(op, params_like, mask, shardings,
                 tuple(np.dtype(x.dtype).name for x in
                       jax.tree.leaves(params_like)), dim, False, params_like)
  flat_mask = None if mask is None else host_flat(mask, dtype)
  return Space(Partial(_flat_apply, op, params_like), np.zeros(n, dtype),
               flat_mask, None, (dtype.name,), dim, True, params_like)


def to_space(space: Space, tree: PyTree) -> PyTree:
  """A pytree like the parameters as a vector of ``space``."""
  return host_flat(tree, space.like.dtype) if space.flat else tree


def to_params(space: Space, x: PyTree) -> PyTree:
  """A vector of ``space`` as a pytree like the parameters."""
  return unflatten(x, space.params_like) if space.flat else x


@functools.partial(jax.jit, static_argnames=('count', 'flat'))
def combine_columns(basis: PyTree, coeffs: jax.Array, params_like: PyTree,
                    *, count: int, flat: bool) -> list:
  """``sum_r coeffs[r, i] basis[r]`` for the first ``count`` columns of
  ``coeffs`` ``(rows, rows)``, in one compiled call on the device (one
  product with the basis for all of them): pytrees like the parameters
  (``params_like``, for a ``flat`` basis) or like a vector."""
  ys = trees.combine(coeffs[:, :count].T, basis)
  out = []
  for c in range(count):
    y = jax.tree.map(lambda x, c=c: x[c], ys)
    out.append(_split(y, params_like, cast=False) if flat else y)
  return out


def combinations(space: Space, basis: PyTree, coeffs: np.ndarray) -> list:
  """``sum_r coeffs[r, i] basis[r]`` for each column ``i`` of ``coeffs``
  (rows beyond its first dimension are zero), as pytrees like the
  parameters. A small flat basis is read to the host once: no compilation;
  otherwise `combine_columns`, on the device."""
  rows = coeffs.shape[0]
  if space.flat and basis.size <= 2 ** 24:
    x = (coeffs.T.astype(basis.dtype) @ np.asarray(basis)[:rows])
    leaves, treedef = jax.tree.flatten(space.params_like)
    sizes = [int(np.prod(np.shape(leaf), dtype=np.int64)) for leaf in leaves]
    pieces = [[p.reshape(np.shape(leaf)) for p, leaf in
               zip(np.split(row, np.cumsum(sizes)[:-1]), leaves)] for row in x]
    pieces = jax.device_put(pieces)  # One transfer for all vectors.
    return [jax.tree.unflatten(treedef, p) for p in pieces]
  full = np.zeros((jax.tree.leaves(basis)[0].shape[0],) * 2, coeffs.dtype)
  full[:rows, :coeffs.shape[1]] = coeffs
  return combine_columns(basis, full, space.params_like if space.flat
                         else None, count=coeffs.shape[1], flat=space.flat)


def solver_kwargs(space: Space) -> dict:
  """The static arguments of `analysis.lanczos.core.extend` for ``space``."""
  return dict(param_dtypes=space.param_dtypes, shardings=space.shardings)

