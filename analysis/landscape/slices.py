r"""1-D and 2-D slices of the loss through a point of parameter space.

A slice evaluates :math:`L(\theta + x\, d_1)` on a line or
:math:`L(\theta + x\, d_1 + y\, d_2)` on a plane. The directions:

* `random_direction` with **filter normalization** (Li et al. 2018): a
  Gaussian direction whose every filter is rescaled to the norm of the
  matching filter of :math:`\theta`,
  :math:`d_{i,j} \leftarrow d_{i,j} \|\theta_{i,j}\| / \|d_{i,j}\|`, so the
  slice is comparable across networks and scale-invariant layers. A filter is
  what one output unit reads: for a Dense or Conv kernel the slice at one
  index of the last (output) axis; for an attention ``qkv`` kernel
  ``(d, 3, heads, head_dim)`` one (q/k/v, head, dim) column; for an ``out``
  kernel ``(heads, head_dim, d)`` one output feature; for an embedding
  ``(vocab, d)`` one row. One-dimensional parameters (biases, norm scales)
  get a zero direction, as in the authors' released code (``ignore='biasbn'``).
* `hessian_directions`: the top eigenvectors of the Hessian
  (`analysis.hessian.top_eigenpairs`), unit-norm.
* `plane_of_three`: the plane through three points (e.g. the
  initialization, a constant-rate checkpoint and its decayed branch):
  :math:`\theta = \theta_0`, :math:`d_1 = \theta_1 - \theta_0`,
  :math:`d_2 = \theta_2 - \theta_0`, so the three sit at (0, 0), (1, 0),
  (0, 1); Garipov et al. orthonormalize instead, which `orthonormal_plane`
  does when metric distances matter.

References:
  Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of
  Neural Nets" (NeurIPS 2018).
  Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces, Mode
  Connectivity, and Fast Ensembling of DNNs" (NeurIPS 2018).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis.landscape import grid
from dynamics import types
from dynamics.types import Batch, PyTree


def filter_axes(name: str, ndim: int) -> Tuple[int, ...]:
  """The axes one filter spans (reduced over for its norm), by name.

  Example:
    >>> filter_axes('dense_0/kernel', 2), filter_axes('conv_0/kernel', 4)
    ((0,), (0, 1, 2))
    >>> filter_axes('block_0/attn/qkv/kernel', 4), filter_axes('embed/embedding', 2)
    ((0,), (1,))
  """
  if ndim <= 1:
    return ()
  if name.endswith('attn/qkv/kernel'):
    return (0,)
  if name.endswith('attn/out/kernel'):
    return tuple(range(ndim - 1))
  if name.endswith('embedding'):
    return tuple(range(1, ndim))
  return tuple(range(ndim - 1))


def filter_normalize(direction: PyTree, params: PyTree,
                     eps: float = 1e-10) -> PyTree:
  r"""Li et al.'s filter normalization of ``direction`` against ``params``.

  .. math::
    d_{i,j} \leftarrow \frac{d_{i,j}}{\|d_{i,j}\| + \epsilon}
                       \|\theta_{i,j}\|

  for every filter ``j`` of every multi-dimensional parameter ``i``
  (`filter_axes`); one-dimensional parameters become zero.

  Args:
    direction: a pytree like ``params``.
    params: the point the slice goes through.
    eps: guards a zero filter of ``direction``.

  Returns:
    The normalized direction (each leaf in its parameter's dtype).
  """

  def normalize(name, d, p):
    axes = filter_axes(name, np.ndim(p))
    if not axes:
      return jnp.zeros_like(p)
    dn = jnp.sqrt(jnp.sum(jnp.square(d.astype(jnp.float32)), axis=axes,
                          keepdims=True))
    pn = jnp.sqrt(jnp.sum(jnp.square(p.astype(jnp.float32)), axis=axes,
                          keepdims=True))
    return (d * (pn / (dn + eps))).astype(p.dtype)

  return jax.tree_util.tree_map_with_path(
      lambda path, d, p: normalize(types.param_name(path), d, p),
      direction, params)


def random_direction(key: jax.Array, params: PyTree,
                     normalize: str = 'filter') -> PyTree:
  """A Gaussian direction like ``params``, filter-normalized by default.

  Args:
    key: PRNG key.
    params: the centre of the slice.
    normalize: 'filter' (Li et al.) or 'none'.
  """
  if normalize not in ('filter', 'none'):
    raise ValueError(f"normalize must be 'filter' or 'none', got {normalize!r}")
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  d = treedef.unflatten([jax.random.normal(k, jnp.shape(x), jnp.float32)
                         .astype(jnp.asarray(x).dtype)
                         for k, x in zip(keys, leaves)])
  return filter_normalize(d, params) if normalize == 'filter' else d


def hessian_directions(loss_fn, params: PyTree, batches: Sequence[Batch],
                       k: int = 2) -> Tuple[np.ndarray, List[PyTree]]:
  """The top-``k`` Hessian eigenpairs at ``params`` (unit eigenvectors).

  Returns:
    ``(eigenvalues (k,), [eigenvector pytrees])`` from
    `analysis.hessian.top_eigenpairs`.
  """
  from analysis import hessian  # pylint: disable=g-import-not-at-top
  op = hessian.curvature('hessian', params, list(batches), loss_fn=loss_fn)
  vals, vecs = hessian.top_eigenpairs(op, k=k)
  return np.asarray(vals), list(vecs)


def plane_of_three(theta_0: PyTree, theta_1: PyTree, theta_2: PyTree
                   ) -> Tuple[PyTree, PyTree, PyTree]:
  """``(centre, d_1, d_2)`` with the three points at (0,0), (1,0), (0,1)."""
  sub = lambda a, b: jax.tree.map(jnp.subtract, a, b)
  return theta_0, sub(theta_1, theta_0), sub(theta_2, theta_0)


def _flat(tree):
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                          for x in jax.tree.leaves(tree)])


def orthonormal_plane(theta_0: PyTree, theta_1: PyTree, theta_2: PyTree
                      ) -> Tuple[PyTree, PyTree, PyTree, np.ndarray]:
  """The plane of three points with orthonormal directions (Gram-Schmidt).

  Returns:
    ``(theta_0, u_1, u_2, coords (3, 2))``: the three points' coordinates in
    the plane, distances in parameter-space units.
  """
  c, d1, d2 = plane_of_three(theta_0, theta_1, theta_2)
  v1, v2 = _flat(d1), _flat(d2)
  n1 = jnp.linalg.norm(v1)
  u1 = v1 / n1
  w = v2 - jnp.dot(v2, u1) * u1
  u2 = w / jnp.linalg.norm(w)
  unravel = ravel_pytree(theta_0)[1]
  coords = np.array([[0, 0], [float(n1), 0],
                     [float(jnp.dot(v2, u1)), float(jnp.dot(v2, u2))]])
  return c, unravel(u1), unravel(u2), coords


def _point(c, context):
  centre, directions = context
  return jax.tree.map(
      lambda t, *ds: t + sum(ci * d for ci, d in zip(c, ds)).astype(t.dtype),
      centre, *directions)


def check_grid(values: Sequence[float], name: str) -> np.ndarray:
  """A non-empty finite 1-D grid, or a one-line ValueError naming ``name``."""
  v = np.asarray(values, np.float64).reshape(-1)
  if v.size == 0 or not np.all(np.isfinite(v)):
    raise ValueError(f'{name}: need a non-empty grid of finite numbers, got '
                     f'{v.tolist()}')
  return v


def slice_1d(loss_fn, params: PyTree, direction: PyTree,
             xs: Sequence[float], batches: Sequence[Batch], *,
             chunk_size: int = 16, show_progress: bool = False
             ) -> Dict[str, Any]:
  r"""Metrics of :math:`\theta + x\, d` for each ``x`` in ``xs``.

  Args:
    loss_fn: ``(params, batch) -> scalar`` or ``-> {name: scalar}``.
    params: :math:`\theta`; direction: :math:`d` (same shapes).
    xs: the grid. batches: the metrics are means over these.
    chunk_size, show_progress: as in `grid.evaluate_points`.

  Returns:
    ``{'xs': [...], name: [...]}``.

  Example:
    >>> r = slice_1d(lambda p, b: jnp.sum(p ** 2), jnp.ones(2), jnp.ones(2),
    ...              [-1.0, 0.0], [jnp.zeros(1)])
    >>> r['loss']
    [0.0, 2.0]
  """
  xs = check_grid(xs, 'xs')
  out = grid.evaluate_points(grid.as_metric_fn(loss_fn), _point, xs[:, None],
                             batches, context=(params, (direction,)),
                             chunk_size=chunk_size,
                             show_progress=show_progress, desc='1-D slice')
  return {'xs': xs.tolist(), **{k: v.tolist() for k, v in out.items()}}


def slice_2d(loss_fn, params: PyTree, d1: PyTree, d2: PyTree,
             xs: Sequence[float], ys: Sequence[float],
             batches: Sequence[Batch], *, chunk_size: int = 16,
             show_progress: bool = False) -> Dict[str, Any]:
  r"""Metrics of :math:`\theta + x\, d_1 + y\, d_2` on the grid ``xs x ys``.

  Returns:
    ``{'xs', 'ys', name: [[...]] (len(ys) rows of len(xs))}`` -- row ``i``
    is ``y = ys[i]``, as ``matplotlib.contour(xs, ys, z)`` expects.
  """
  xs, ys = check_grid(xs, 'xs'), check_grid(ys, 'ys')
  gx, gy = np.meshgrid(xs, ys)
  coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
  out = grid.evaluate_points(grid.as_metric_fn(loss_fn), _point, coords,
                             batches, context=(params, (d1, d2)),
                             chunk_size=chunk_size,
                             show_progress=show_progress, desc='2-D slice')
  return {'xs': xs.tolist(), 'ys': ys.tolist(),
          **{k: v.reshape(len(ys), len(xs)).tolist() for k, v in out.items()}}
