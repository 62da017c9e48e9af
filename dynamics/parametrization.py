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

import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dynamics.types import PyTree, param_name

Rules = Sequence[Tuple[str, float]]

ADAM_LIKE = ('adam', 'adamw', 'adamp', 'stable_spam')
SGD_LIKE = ('sgd', 'momentum', 'sgdp')
# Matrices whose fan-in and fan-out both grow with width, per model.
HIDDEN_KERNELS = {
    'transformer': r'block_\d+/(attn/(qkv|out)|mlp/(fc_in|fc_out))/kernel',
    'mlp': r'dense_[1-9]\d*/kernel',
    'cnn': r'conv_[1-9]\d*/kernel',
    'resnet': r'stage\d+_block\d+/conv_(0|1|proj)/kernel',
}
# Parameters whose size does not grow with width.
FIXED_SIZE = r'(head/bias|.*/alpha)'


def width(model_config: Any) -> int:
  """The width muP's ``base_width`` refers to: ``d_model`` (transformer), the
  first hidden size (MLP), the first channel count (CNN / ResNet)."""
  m = model_config
  if m.name == 'transformer':
    return int(m.d_model)
  if m.name == 'mlp':
    return int(m.hidden_sizes[0])
  return int(m.channels[0])


def mup_lr_multipliers(model_config: Any, optimizer_name: str
                       ) -> Tuple[Tuple[str, float], ...]:
  """muP's per-layer learning-rate multipliers as ``(regex, multiplier)`` rules.

  Args:
    model_config: ``config.model`` with ``parametrization='mup'`` and
      ``base_width`` set.
    optimizer_name: ``config.optimizer.name``; Adam-type and SGD-type
      optimizers get different rules (module docstring).

  Returns:
    Rules for :func:`scale_by_lr_multipliers`; the first match wins and
    unmatched parameters keep multiplier 1.

  Example:
    >>> m = ml_collections.ConfigDict(dict(name='mlp', hidden_sizes=(256,),
    ...                                    base_width=64))
    >>> mup_lr_multipliers(m, 'adam')
    (('dense_[1-9]\\\\d*/kernel', 0.25),)
  """
  r = width(model_config) / float(model_config.base_width)
  hidden = HIDDEN_KERNELS[model_config.name]
  if optimizer_name in SGD_LIKE:
    return ((hidden, 1.0), (FIXED_SIZE, 1.0), (r'.*', r))
  if optimizer_name in ADAM_LIKE:
    return ((hidden, 1.0 / r),)
  raise ValueError(f'muP has no learning-rate rule for optimizer.name='
                   f'{optimizer_name!r}; known: {ADAM_LIKE + SGD_LIKE}')


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
