r"""Blocks of parameters: masks, diagonal blocks of an operator, per-layer groups.

A block ``S`` is a set of parameter leaves, chosen by name
(`dynamics.types.param_name`). Its diagonal block :math:`C_{SS}` acts on the
full parameter pytree as :math:`v \mapsto M\, C (M v)` with :math:`M` the
0/1 mask of ``S``: the mask is data, so one compiled product and one compiled
solver serve every block of a model.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List

import jax
import jax.numpy as jnp  # pylint: disable=unused-import (examples)
import numpy as np

from dynamics.types import PyTree, param_names

# Named parameter blocks for per-block spectra: regular expressions matched
# (case-insensitively) against parameter names (`dynamics.types.param_name`).
# Normalization modules carry "norm" in their names (see dynamics.models).
BLOCKS = {
    'attention': r'attn|attention',
    'mlp': r'mlp',
    'norm': r'norm',
    'embedding': r'embed',
}


def block_mask(params: PyTree, select: Any) -> PyTree:
  """A pytree of bools selecting a block of parameters.

  Args:
    params: the parameters (arrays or ``ShapeDtypeStruct``).
    select: a key of `BLOCKS` ('attention', 'mlp', 'norm', 'embedding'), a
      regular expression searched (case-insensitively) in each leaf's name
      (`dynamics.types.param_name`, e.g. ``'block_0/attn/qkv/kernel'``), a
      callable ``(name, leaf) -> bool``, or already a pytree of bools shaped
      like ``params``.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Raises:
    ValueError: if nothing is selected (the message lists the names).

  Example:
    >>> params = {'attn': {'kernel': jnp.ones(2)}, 'mlp': {'kernel': jnp.ones(3)}}
    >>> block_mask(params, 'attention')
    {'attn': {'kernel': True}, 'mlp': {'kernel': False}}
  """
  leaves, treedef = jax.tree.flatten(params)
  names = param_names(params)
  if isinstance(select, str):
    pattern = re.compile(BLOCKS.get(select, select), re.IGNORECASE)
    chosen = [bool(pattern.search(n)) for n in names]
  elif callable(select):
    chosen = [bool(select(n, leaf)) for n, leaf in zip(names, leaves)]
  else:
    chosen = [bool(x) for x in jax.tree.leaves(select)]
    if len(chosen) != len(names):
      raise ValueError(f'mask has {len(chosen)} leaves, params {len(names)}')
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  if not any(c and s for c, s in zip(chosen, sizes)):
    raise ValueError(
        f'mask {select!r} selects no parameters; parameter names are: '
        + ', '.join(names))
  return jax.tree.unflatten(treedef, chosen)


def mask_weights(params: PyTree, select: Any) -> tuple[PyTree, int]:
  """``(0/1 pytree like params, number of selected entries)`` of a block.

  The weights have the parameters' shapes, dtypes and (for arrays) layout:
  NumPy arrays placed like each parameter, so building one compiles nothing.
  """
  chosen = block_mask(params, select)

  def weight(p, c):
    w = np.full(np.shape(p), float(c), np.dtype(p.dtype))
    sharding = getattr(p, 'sharding', None)
    if sharding is None or len(sharding.device_set) == 1:
      return w  # Placed when used, like any host array: one compile for all.
    return jax.device_put(w, sharding)

  weights = jax.tree.map(weight, params, chosen)
  dim = sum(int(np.prod(np.shape(p))) for p, c in
            zip(jax.tree.leaves(params), jax.tree.leaves(chosen)) if c)
  return weights, dim


def masked_apply(op, weights: PyTree, v: PyTree) -> PyTree:
  """``M op(M v)``: the diagonal block of ``op`` on the block ``weights``."""
  mul = lambda x, m: x * m.astype(x.dtype)
  return jax.tree.map(mul, op(jax.tree.map(mul, v, weights)), weights)


def layer_blocks(params: PyTree, by: str = 'layers') -> Dict[str, List[str]]:
  """Groups of parameter names for a per-block report.

  Args:
    params: the parameters.
    by: 'layers' (leaves sharing a parent module, e.g. ``dense_0/kernel`` and
      ``dense_0/bias`` form ``dense_0``), 'tensors' (every leaf alone), or a
      key of `BLOCKS` / a regular expression (that block and the rest).

  Returns:
    ``{block name: [parameter names]}`` in parameter order, empty leaves
    dropped.

  Example:
    >>> params = {'dense_0': {'bias': jnp.ones(2), 'kernel': jnp.ones((3, 2))},
    ...           'head': {'kernel': jnp.ones((2, 1))}}
    >>> layer_blocks(params)
    {'dense_0': ['dense_0/bias', 'dense_0/kernel'], 'head': ['head/kernel']}
  """
  names = [n for n, leaf in zip(param_names(params), jax.tree.leaves(params))
           if np.prod(np.shape(leaf)) > 0]
  groups: Dict[str, List[str]] = {}
  if by == 'tensors':
    return {n: [n] for n in names}
  if by == 'layers':
    for n in names:
      groups.setdefault(n.rpartition('/')[0] or n, []).append(n)
    return groups
  pattern = re.compile(BLOCKS.get(by, by), re.IGNORECASE)
  inside = [n for n in names if pattern.search(n)]
  if not inside:
    raise ValueError(f'blocks={by!r} selects no parameters; parameter names '
                     'are: ' + ', '.join(names))
  groups[by] = inside
  rest = [n for n in names if n not in inside]
  if rest:
    groups['rest'] = rest
  return groups
