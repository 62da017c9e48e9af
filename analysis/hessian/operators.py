r"""Curvature operators: `curvature(kind, params, batches, ...)` -> `Operator`.

Every curvature matrix is only ever touched through products :math:`v
\mapsto Cv` of the mean batch loss; the matrices and their products are the
entries of `analysis.hessian.registry.PRODUCTS` (the table is there). An
`Operator` is a value: build it once, pass it to every solver
(`top_eigenpairs`, `spectral_density`, `trace`, `diagonal`, `block_report`,
`power_iteration`, `preconditioned_sharpness`), restrict it to a block of
parameters (`Operator.restrict`, `analysis.hessian.blocks`).

Example:
  >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
  >>> op = curvature('hessian', jnp.zeros(3), [jnp.array([1., 2., 4.])],
  ...                loss_fn=loss)
  >>> op.matvec(jnp.ones(3)), op.dim
  (Array([1., 2., 4.], dtype=float32), 3)
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from analysis.hessian import blocks
from analysis.hessian import likelihood as likelihood_lib
from analysis.hessian import registry
from analysis.lanczos import trees
from dynamics.types import Batch, LossFn, PyTree


class Operator(NamedTuple):
  """A curvature operator, possibly restricted to a block of parameters.

  Attributes:
    matvec: ``v -> Cv`` on pytrees like ``params`` (a `Partial`, so solvers
      compile it once); zero outside the block.
    like: the parameters (shapes, dtypes and layout of the vectors).
    mask: 0/1 pytree of the block (None: every parameter).
    dim: the dimension of the block.
  """
  matvec: Partial
  like: PyTree
  mask: PyTree | None
  dim: int

  def restrict(self, select: Any) -> Operator:
    r"""The diagonal block :math:`C_{SS}` of the parameters ``select``
    chooses (see `analysis.hessian.blocks.block_mask`); the mask is data, so
    every block of the same operator shares one compilation.

    Raises:
      ValueError: nothing selected, or an operator already restricted.
    """
    if self.mask is not None:
      raise ValueError('this operator is already restricted to a block: '
                       'restrict the whole operator instead')
    weights, dim = blocks.mask_weights(self.like, select)
    return Operator(Partial(blocks.masked_apply, self.matvec, weights),
                    self.like, weights, dim)


@functools.lru_cache(maxsize=64)
def _batched_product(kind: str, needed: tuple):
  """A jitted ``(params, stacked_batches, v) -> mean_b C_b v``, one per
  (kind, inputs): every operator of the same loss shares a compilation."""
  fn, inputs = registry.PRODUCTS[kind].fn, dict(needed)

  def single(params, batch, v, index):
    return fn(params, batch, v, index, **inputs)

  @jax.jit
  def product(params, stacked_batches, v):
    v = trees.cast_like(v, params)
    num_batches = jax.tree.leaves(stacked_batches)[0].shape[0]
    if num_batches == 1:  # No loop: less to compile.
      return single(params, jax.tree.map(lambda x: x[0], stacked_batches), v,
                    jnp.int32(0))

    # A scan with a running sum: memory does not grow with the batches.
    def accumulate(carry, batch):
      total, index = carry
      return (optax.tree.add(total, single(params, batch, v, index)),
              index + 1), None

    (total, _), _ = jax.lax.scan(
        accumulate, (optax.tree.zeros_like(params), jnp.int32(0)),
        stacked_batches)
    return optax.tree.scale(1.0 / num_batches, total)

  return product


def _stack_batches(batches: Iterable[Batch]) -> PyTree:
  """Stacks equally-shaped batches along a new leading axis."""
  batches = list(batches)
  if not batches:
    raise ValueError('batches is empty: pass a list of at least one batch')
  structures = {jax.tree.structure(b) for b in batches}
  shapes = {tuple(np.shape(x) for x in jax.tree.leaves(b)) for b in batches}
  if len(structures) > 1 or len(shapes) > 1:
    raise ValueError(
        'all batches must have the same structure and shapes (the HVP is '
        f'compiled once for them); got shapes {sorted(shapes)}')
  def stack(*xs):
    if all(isinstance(x, np.ndarray) or np.isscalar(x) for x in xs):
      return np.stack(xs)  # Host arrays: no compilation.
    return jnp.stack([jnp.asarray(x) for x in xs])

  return jax.tree.map(stack, *batches)


def _needed(kind: str, inputs: dict) -> tuple:
  """``((name, value), ...)`` of what ``kind`` needs, or a ValueError naming
  what is missing (an unknown input is a TypeError)."""
  entry = registry.product(kind)
  unknown = sorted(set(inputs) - set(registry.INPUTS))
  if unknown:
    raise TypeError(f'unknown curvature inputs {unknown}; products take '
                    f'{", ".join(registry.INPUTS)}')
  missing = [n for n in entry.needs if inputs.get(n) is None]
  if missing:
    raise ValueError(f'kind={kind!r} needs ' + ' and '.join(
        f'{n} ({registry.INPUTS[n]})' for n in missing))
  needed = {n: inputs[n] for n in entry.needs}
  if 'likelihood' in needed:
    needed['likelihood'] = likelihood_lib.as_likelihood(needed['likelihood'])
  return tuple(sorted(needed.items()))


def curvature(kind: str, params: PyTree, batches: Iterable[Batch], *,
              mask: Any = None, **inputs) -> Operator:
  r"""The curvature ``kind`` of the mean batch loss at ``params``.

  .. math::
     v \mapsto \frac{1}{B} \sum_{b=1}^{B} C_b\, v

  The batches are stacked and summed in a ``lax.scan`` (constant memory in
  their number), so the product is traced and compiled once per kind and
  inputs, whatever the parameters and batches.

  Args:
    kind: a key of `analysis.hessian.registry.PRODUCTS`: 'hessian', 'ggn',
      'fisher', 'empirical_fisher', or the Kronecker-factored 'kfac' and
      'ekfac' (`analysis.hessian.kfac`: factors pooled over the batches; its
      `factors` has the empirical and exact flavours).
    params: the point at which the matrix is taken.
    batches: batches with identical shapes; each is weighted equally.
    mask: restrict to a block of parameters (see `Operator.restrict`).
    **inputs: what the kind needs (`registry.INPUTS`; others are ignored):
      ``loss_fn`` ``(params, batch) -> scalar`` (Hessian), ``model_fn``
      ``(params, batch) -> outputs`` (all others), ``output_loss_fn``
      ``(outputs, batch) -> scalar`` (GGN), ``likelihood`` (a `Likelihood`,
      or 'categorical'; the Fishers). `run_curvature` takes them from a run.

  Returns:
    An `Operator`; its ``matvec`` is a `jax.tree_util.Partial`, so it can be
    passed into jitted solvers without recompiling.

  Raises:
    ValueError: an unknown ``kind``, one missing what it needs (the message
      names it), or batches of different shapes.

  Example:
    >>> loss = lambda w, b: jnp.sum(b * w ** 4) / 12
    >>> op = curvature('hessian', jnp.ones(2), [jnp.array([1., 2.])],
    ...                loss_fn=loss)
    >>> op.matvec(jnp.array([1., 1.]))
    Array([1., 2.], dtype=float32)
  """
  needed = _needed(kind, inputs)
  build = registry.PRODUCTS[kind].build
  if build is not None:  # Built once from every batch (KFAC's factors).
    matvec = build(params, _stack_batches(batches), **dict(needed))
  else:
    matvec = Partial(_batched_product(kind, needed), params,
                     _stack_batches(batches))
  op = Operator(matvec, params, None, trees.size(params))
  return op if mask is None else op.restrict(mask)


def hvp_fn(loss_fn: LossFn, params: PyTree,
           batches: Iterable[Batch]) -> Partial:
  """The Hessian-vector product ``v -> Hv`` of the mean batch loss:
  ``curvature('hessian', params, batches, loss_fn=loss_fn).matvec``."""
  return curvature('hessian', params, batches, loss_fn=loss_fn).matvec


def default_key(key: jax.Array | None) -> jax.Array:
  """``key``, or ``PRNGKey(0)`` when None (the solvers' default start)."""
  return jax.random.PRNGKey(0) if key is None else key
