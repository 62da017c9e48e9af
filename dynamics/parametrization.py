"""Parametrizations that act through the optimizer, and per-layer rotation probes.

muP (the maximal-update parametrization, Yang et al., "Tensor Programs V:
Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer", 2021)
has two halves. The model half -- init variances, the ``1/width_mult``
readout multiplier on a readout initialized at zero (Table 3 allows zero or
variance ``1/fan_in^2``; zero is the paper's recommendation, App. D.2) and
``1/d_head`` attention -- lives in ``dynamics.models.layers.Knobs``. The
optimizer half is a per-layer learning-rate multiplier, following the ``mup``
package's ``MuAdam`` / ``MuSGD`` with ``r = width / base_width``:

==========================  ===============  ==========================
parameter                   Adam-type LR     SGD-type LR
==========================  ===============  ==========================
hidden matrices             ``lr / r``       ``lr``
input weights, biases,      ``lr``           ``lr * r``
norm gains, readout
size-fixed (head bias,      ``lr``           ``lr``
DyT's alpha)
==========================  ===============  ==========================

At ``r = 1`` every multiplier is 1 and muP is the standard parametrization
with a zero readout. The multipliers scale the optimizer's whole update,
decoupled weight decay included (``mup`` instead keeps ``lr * weight_decay``
fixed).

``config.optimizer.lr_multipliers`` holds them as ``((regex, multiplier),
...)`` pairs matched against parameter paths such as
``block_0/attn/qkv/kernel``; :func:`optimizer_config` fills them in for a muP
config and ``dynamics.optim.build_optimizer`` applies them with
:func:`scale_by_lr_multipliers`.
"""

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics.optim.multipliers import (Rules, multiplier_tree,
                                        scale_by_lr_multipliers)
from dynamics.types import PyTree, param_name

# Parameters whose size does not grow with width.
FIXED_SIZE = r'(head/bias|.*/alpha)'
# muP's rules per optimizer family (``dynamics.optim.OPTIMIZERS[name].family``),
# as a function of the hidden-kernel regex and the width ratio r.
MUP_RULES: Dict[str, Callable[[str, float], Tuple[Tuple[str, float], ...]]] = {
    'adam': lambda hidden, r: ((hidden, 1.0 / r),),
    'sgd': lambda hidden, r: ((hidden, 1.0), (FIXED_SIZE, 1.0), (r'.*', r)),
}


def width(model_config: Any) -> int:
  """The width muP's ``base_width`` refers to (the model's registry entry:
  ``d_model``, the first hidden size, the first channel count)."""
  return models_lib.MODELS[model_config.name].width(model_config)


def mup_lr_multipliers(model_config: Any, optimizer_name: str
                       ) -> Tuple[Tuple[str, float], ...]:
  """muP's per-layer learning-rate multipliers as ``(regex, multiplier)`` rules.

  Args:
    model_config: ``config.model`` with ``parametrization='mup'`` and
      ``base_width`` set.
    optimizer_name: ``config.optimizer.name``; its family in the optimizer
      registry (Adam-type or SGD-type) picks the rules (module docstring).

  Returns:
    Rules for :func:`scale_by_lr_multipliers`; the first match wins and
    unmatched parameters keep multiplier 1.

  Example:
    >>> m = ml_collections.ConfigDict(dict(name='mlp', hidden_sizes=(256,),
    ...                                    base_width=64))
    >>> mup_lr_multipliers(m, 'adam')
    (('dense_[1-9]\\\\d*/kernel', 0.25),)
  """
  family = optim_lib.OPTIMIZERS[optimizer_name].family
  if family not in MUP_RULES:
    raise ValueError(f'muP has no learning-rate rule for optimizer.name='
                     f'{optimizer_name!r} (family {family!r}); known '
                     f'families: {tuple(MUP_RULES)}')
  r = width(model_config) / float(model_config.base_width)
  return MUP_RULES[family](models_lib.MODELS[model_config.name].hidden_kernels,
                           r)


def optimizer_config(config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """``config.optimizer``, with muP's ``lr_multipliers`` filled in when
  ``config.model.parametrization == 'mup'`` (a copy; the input is unchanged).
  Pass the result to ``dynamics.optim.build_optimizer``."""
  if config.model.parametrization != 'mup' or (
      config.optimizer.lr_multipliers is not None):
    return config.optimizer
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt.lr_multipliers = mup_lr_multipliers(config.model, config.optimizer.name)
  return opt


def rotation_metrics(params: PyTree, new_params: PyTree,
                     learning_rate: jax.Array) -> Dict[str, jax.Array]:
  """Effective learning rate and angular update of every weight matrix.

  For a scale-invariant weight ``w`` (one feeding a normalization, so that
  ``f(c w) = f(w)``) only the direction ``w / ||w||`` matters, and a step of
  size ``eta`` moves it like a step of ``eta / ||w||^2`` on the sphere
  (van Laarhoven, 2017; Li and Arora, 2020). Per weight matrix (``ndim >= 2``,
  biases excluded):

  * ``layers/effective_lr/<path>`` = ``eta / ||w||^2`` (``eta`` the
    schedule's learning rate; meaningful for scale-invariant weights),
  * ``layers/angular_update/<path>`` = the angle between ``w`` and the
    updated ``w'``, ``2 arcsin(||w/||w|| - w'/||w'|| || / 2)`` in radians
    (accurate for small angles, unlike ``arccos`` of the cosine).

  Args:
    params: the weights before the update.
    new_params: the weights after it.
    learning_rate: the step's learning rate (scalar).

  Returns:
    A dict of scalar metrics.

  References:
    Kosson et al., "Rotational Equilibrium: How Weight Decay Balances
    Learning Across Neural Networks", ICML 2024.
  """
  out = {}
  flat_old = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_new = jax.tree.leaves(new_params)
  for (path, w), w_new in zip(flat_old, flat_new):
    name = param_name(path)
    if w.ndim < 2 or name.endswith('bias'):  # DenseGeneral biases are n-d.
      continue
    w = jnp.ravel(w).astype(jnp.float32)
    w_new = jnp.ravel(w_new).astype(jnp.float32)
    sq = jnp.sum(w * w)
    tiny = jnp.finfo(jnp.float32).tiny
    u = w / jnp.maximum(jnp.sqrt(sq), tiny)
    u_new = w_new / jnp.maximum(jnp.linalg.norm(w_new), tiny)
    chord = jnp.minimum(jnp.linalg.norm(u - u_new) / 2, 1.0)
    out[f'layers/effective_lr/{name}'] = learning_rate / jnp.maximum(sq, tiny)
    out[f'layers/angular_update/{name}'] = 2.0 * jnp.arcsin(chord)
  return out


__all__ = ['FIXED_SIZE', 'MUP_RULES', 'Rules',
           'multiplier_tree', 'mup_lr_multipliers', 'optimizer_config',
           'rotation_metrics', 'scale_by_lr_multipliers', 'width']
