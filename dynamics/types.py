"""The project's shared vocabulary: type aliases and parameter names.

Every module says ``PyTree``, ``Batch``, ``LossFn`` and ``ApplyFn`` with these
meanings, and every feature that matches parameters by name (muP rules, the
SAM-ON mask, AdamP's projection axes, per-layer metrics, Hessian blocks) builds
the names with `param_name`, so one regular expression means the same thing
everywhere.
"""

from typing import Any, Callable, Dict, List, Tuple

import jax

PyTree = Any
"""A nested structure of arrays (dicts, lists, tuples, dataclasses)."""

Batch = Dict[str, Any]
"""``{'inputs': array, 'targets': array}``: NumPy on the host, ``jax.Array``
on devices."""

LossFn = Callable[[PyTree, Batch], jax.Array]
"""``(params, batch) -> scalar loss``."""

ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
"""``(params, inputs) -> outputs``."""


def param_name(path: Tuple[Any, ...]) -> str:
  """The '/'-joined name of a key path, e.g. ``'block_0/attn/qkv/kernel'``.

  Example:
    >>> import jax.numpy as jnp
    >>> tree = {'block_0': {'attn': {'kernel': jnp.ones(2)}}, 'head': [jnp.ones(1)]}
    >>> [param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    ['block_0/attn/kernel', 'head/0']
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator='/')


def param_names(tree: PyTree) -> List[str]:
  """`param_name` of every leaf of ``tree``, in flattening order."""
  return [param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def map_with_names(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
  """``fn(name, leaf)`` on every leaf, with ``name = param_name(path)``.

  Example:
    >>> map_with_names(lambda name, x: name.endswith('kernel'),
    ...                {'dense': {'kernel': 1, 'bias': 2}})
    {'dense': {'bias': False, 'kernel': True}}
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(param_name(path), leaf), tree)
