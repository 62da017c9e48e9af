"""Per-parameter learning-rate multipliers: ``(regex, multiplier)`` rules.

``config.optimizer.lr_multipliers`` holds such rules (muP fills them in:
`dynamics.parametrization.mup_lr_multipliers`); `build_optimizer` chains
:func:`scale_by_lr_multipliers` after the optimizer.
"""

import re
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from dynamics.types import PyTree, param_name

Rules = Sequence[Tuple[str, float]]


def multiplier_tree(params: PyTree, rules: Rules) -> PyTree:
  """The multiplier of each leaf: the first rule whose regex fully matches
  its path (`dynamics.types.param_name`), else 1."""
  compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

  def find(path, _):
    name = param_name(path)
    for pattern, mult in compiled:
      if pattern.fullmatch(name):
        return mult
    return 1.0

  return jax.tree_util.tree_map_with_path(find, params)


def scale_by_lr_multipliers(rules: Optional[Rules]
                            ) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its learning-rate multiplier.

  .. math:: u_\\ell \\leftarrow c_\\ell \\, u_\\ell

  with ``c_l`` the multiplier of the first rule matching the parameter's path.
  Chained after an optimizer, this is a per-layer learning rate
  ``c_l * lr`` (decoupled weight decay included).

  Args:
    rules: ``(regex, multiplier)`` pairs (e.g. :func:`mup_lr_multipliers`);
      ``None`` or empty is the identity.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Example:
    >>> tx = optax.chain(optax.adam(1e-3),
    ...                  scale_by_lr_multipliers([('hidden/kernel', 0.25)]))

  References:
    Yang et al., "Tensor Programs V", 2021 (per-layer learning rates of muP).
  """
  rules = tuple((str(p), float(m)) for p, m in (rules or ()))

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    mults = multiplier_tree(updates, rules)
    updates = jax.tree.map(
        lambda u, c: u if c == 1.0 else u * jnp.asarray(c, u.dtype),
        updates, mults)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
