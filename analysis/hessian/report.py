"""Per-block (per-layer) curvature: `block_report`.

For every layer or tensor of the parameters, the top eigenvalue, the trace
and the Frobenius norm of its diagonal block of an `Operator`; the command
(``python -m analysis.hessian --blocks=layers``) writes it as JSON and plots
it through `analysis.hessian.checkpoint_blocks`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import lanczos as lz
from analysis.hessian import blocks as blocks_lib
from analysis.hessian import estimators, operators
from analysis.hessian.operators import Operator, curvature  # pylint: disable=unused-import (examples)
from dynamics.types import param_names


@functools.partial(jax.jit, static_argnames=('num', 'batch_size'))
def _block_forms(op, like, weights, key, index, exact, *, num, batch_size):
  """Per probe ``z``: ``(z^T C z, |C z|^2)``; ``z`` the unit vector of
  ``index[l]`` (none for -1) where ``exact``, else random signs on the block."""
  flat, unravel = ravel_pytree(like)
  dtype = jnp.promote_types(flat.dtype, jnp.float32)
  w = ravel_pytree(weights)[0].astype(dtype)

  def forms(args):
    sub, i = args
    signs = jax.random.rademacher(sub, w.shape, dtype) * w
    unit = jnp.zeros_like(w).at[jnp.maximum(i, 0)].set(jnp.where(i >= 0, 1, 0))
    z = jnp.where(exact, unit, signs)
    cz = ravel_pytree(op(unravel(z.astype(flat.dtype))))[0].astype(dtype)
    return jnp.vdot(z, cz), jnp.vdot(cz, cz)

  return jax.lax.map(forms, (jax.random.split(key, num), index),
                     batch_size=batch_size)


def block_report(op: Operator, *, blocks: Any = 'layers',
                 num_probes: int = 100, tol: float | None = None,
                 key: jax.Array | None = None,
                 batch_size: int = 16) -> Dict[str, Any]:
  r"""Top eigenvalue, trace and Frobenius norm of every diagonal block.

  For each block ``S`` (a layer, a tensor, ...) of the parameters and for
  the whole model: :math:`\lambda_{\max}(C_{SS})` by Lanczos (converged to
  ``tol``), :math:`\mathrm{tr}(C_{SS})` and :math:`\|C_{SS}\|_F` -- exactly
  (from the ``|S|`` unit vectors) when ``|S| <= num_probes``, else by
  Hutchinson with ``num_probes`` Rademacher probes (:math:`E[z^\top C z] =
  \mathrm{tr}\,C`, :math:`E\|Cz\|^2 = \|C\|_F^2`) with standard errors. The
  blocks are masks applied as data: one compiled HVP, one compiled Lanczos
  and one compiled probe loop serve every block.

  Args:
    op: the whole (unrestricted) `Operator`; key: as in `top_eigenpairs`.
    blocks: 'layers', 'tensors', a key of `BLOCKS` or a regular expression
      (see `layer_blocks`), or a dict ``{name: selector}`` of `block_mask`
      selectors.
    num_probes: probes per trace / Frobenius estimate.
    tol: Lanczos tolerance (default: the dtype's).
    batch_size: probes whose HVPs are batched together.

  Returns:
    ``{'blocks': [row, ...], 'whole': row}``, each row a dict with ``name``,
    ``params`` (names), ``size``, ``top_eigenvalue``, ``top_residual``,
    ``converged``, ``trace``, ``trace_stderr``, ``frobenius``,
    ``frobenius_stderr`` and ``exact``.

  Example:
    >>> params = {'a': {'w': jnp.ones(2)}, 'b': {'w': jnp.ones(1)}}
    >>> loss = lambda p, x: 0.5 * jnp.sum(x['a'] * p['a']['w'] ** 2) + (
    ...     p['b']['w'][0] ** 2)
    >>> op = curvature('hessian', params, [{'a': jnp.array([1., 3.])}],
    ...                loss_fn=loss)
    >>> rows = block_report(op)
    >>> [(r['name'], round(r['top_eigenvalue'], 4), round(r['trace'], 4))
    ...  for r in rows['blocks']]
    [('a', 3.0, 4.0), ('b', 2.0, 2.0)]
  """
  params = op.like
  if isinstance(blocks, dict):
    selectors = dict(blocks)
  else:
    groups = blocks_lib.layer_blocks(params, blocks)
    selectors = {name: (lambda n, _, names=frozenset(names): n in names)
                 for name, names in groups.items()}
  key = operators.default_key(key)
  names = param_names(params)
  n = lz.trees.size(params)
  # One basis size (and so one compiled Lanczos) for every block.
  basis_size = lz.default_basis_size(
      1, lz.default_max_matvecs(1, n), n)
  rows = []
  for i, (name, select) in enumerate(list(selectors.items()) + [('whole',
                                                                  None)]):
    block = op.restrict((lambda *_: True) if select is None else select)
    weights, dim = block.mask, block.dim
    sub = jax.random.fold_in(key, i)
    top = lz.eigsh(block.matvec, params, 1, key=sub, tol=tol, mask=weights,
                   dim=dim, basis_size=basis_size, vectors=False,
                   name=f'block_report[{name}]', unit='HVPs')
    exact = dim <= num_probes
    index = np.full(num_probes, -1, np.int32)
    if exact:
      index[:dim] = np.flatnonzero(lz.space.host_flat(weights, np.float32))
    quad, sq = (np.asarray(x, np.float64) for x in _block_forms(
        block.matvec, params, weights, sub, index, np.bool_(exact),
        num=num_probes, batch_size=batch_size))
    if exact:
      tr, tr_se, fro2, fro2_se = quad.sum(), 0.0, sq.sum(), 0.0
    else:
      tr, tr_se = estimators.summarize(quad)
      fro2, fro2_se = estimators.summarize(sq)
    if not (np.isfinite(tr) and np.isfinite(fro2)):
      raise FloatingPointError(f'non-finite HVP in block {name!r}; stopping.')
    fro = float(np.sqrt(max(fro2, 0.0)))
    selected = names if select is None else [
        nm for nm, c in zip(names, jax.tree.leaves(blocks_lib.block_mask(
            params, select))) if c]
    rows.append({
        'name': name, 'params': selected, 'size': int(dim),
        'top_eigenvalue': float(top.eigvals[0]),
        'top_residual': float(top.relative[0]), 'converged': top.converged,
        'top_hvps': top.num_matvecs, 'trace': float(tr),
        'trace_stderr': float(tr_se), 'frobenius': fro,
        'frobenius_stderr': float(fro2_se / (2 * fro)) if fro > 0 else 0.0,
        'exact': bool(exact)})
  return {'blocks': rows[:-1], 'whole': rows[-1], 'num_probes': num_probes}
