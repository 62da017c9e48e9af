"""Optimizers as optax ``GradientTransformation``s, built from config.

``build_optimizer(config.optimizer, schedule)`` returns the base optimizer
(optionally preceded by global-norm clipping). SAM-type methods are not
optimizers but gradient estimators: ``sam_gradient`` is called by the train
step and its gradient is fed to whatever optimizer is configured.
"""

from typing import Any, Callable, Dict

import jax
import optax

from dynamics.optim.adamp import adamp, sgdp
from dynamics.optim.sam import norm_mask, sam_gradient, sam_mask
from dynamics.optim.stable_spam import stable_spam

OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw', 'adamp', 'sgdp', 'stable_spam')
WEIGHT_DECAY_MASKS = ('all', 'matrices')


def weight_decay_mask(kind: str) -> Callable[[Any], Any]:
  """Mask function for decoupled weight decay: 'all' or 'matrices' (ndim >= 2)."""
  if kind == 'all':
    return lambda params: jax.tree.map(lambda _: True, params)
  if kind == 'matrices':
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  raise ValueError(f'optimizer.weight_decay_mask must be one of '
                   f'{WEIGHT_DECAY_MASKS}, got {kind!r}')


def _adamp(o, lr):
  return adamp(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
               delta=o.delta, wd_ratio=o.wd_ratio, nesterov=o.nesterov,
               weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


def _sgdp(o, lr):
  return sgdp(lr, momentum=o.momentum, dampening=o.dampening,
              weight_decay=o.weight_decay, nesterov=o.nesterov, eps=o.eps,
              delta=o.delta, wd_ratio=o.wd_ratio,
              weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


def _stable_spam(o, lr):
  return stable_spam(lr, b1=o.b1, b2=o.b2, eps=o.eps,
                     weight_decay=o.weight_decay, gamma1=o.gamma1,
                     gamma2=o.gamma2, theta=o.theta,
                     reset_interval=o.reset_interval,
                     beta1_decay_steps=o.beta1_decay_steps,
                     beta1_decay_min=o.beta1_decay_min,
                     weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


_BUILDERS: Dict[str, Callable[[Any, Any], optax.GradientTransformation]] = {
    'sgd': lambda o, lr: optax.sgd(lr),
    'momentum': lambda o, lr: optax.sgd(lr, momentum=o.momentum,
                                        nesterov=o.nesterov),
    'adam': lambda o, lr: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps),
    'adamw': lambda o, lr: optax.adamw(
        lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
        mask=weight_decay_mask(o.weight_decay_mask)),
    'adamp': _adamp,
    'sgdp': _sgdp,
    'stable_spam': _stable_spam,
}


def build_optimizer(opt_config: Any, schedule: optax.Schedule
                    ) -> optax.GradientTransformation:
  """The optimizer named by ``opt_config.name`` with learning rate ``schedule``.

  Args:
    opt_config: ``config.optimizer``.
    schedule: ``step -> learning rate`` (already scaled to the peak value).

  Returns:
    An ``optax.GradientTransformation``; with ``opt_config.clip_norm`` set it
    is ``chain(clip_by_global_norm(clip_norm), optimizer)``. With
    ``opt_config.orthograd`` the gradient first goes through ``⊥Grad``
    (``dynamics.optim.orthograd``); with ``opt_config.lr_multipliers`` (muP,
    see ``dynamics.parametrization``) each parameter's final update is
    scaled by its multiplier:
    ``chain(orthograd, clip, optimizer, scale_by_lr_multipliers)``.
  """
  if opt_config.name not in _BUILDERS:
    raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, '
                     f'got {opt_config.name!r}')
  tx = _BUILDERS[opt_config.name](opt_config, schedule)
  if opt_config.name in ('sgd', 'momentum', 'adam') and opt_config.weight_decay:
    # Coupled L2 decay (PyTorch's SGD/Adam `weight_decay`); adamw, adamp, sgdp
    # and stable_spam decouple it themselves.
    tx = optax.chain(
        optax.add_decayed_weights(opt_config.weight_decay,
                                  weight_decay_mask(opt_config.weight_decay_mask)),
        tx)
  if opt_config.lr_multipliers:
    from dynamics import parametrization
    tx = optax.chain(
        tx, parametrization.scale_by_lr_multipliers(opt_config.lr_multipliers))
  if opt_config.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.clip_norm), tx)
  if opt_config.orthograd:
    from dynamics.optim.orthograd import orthograd
    tx = optax.chain(orthograd(), tx)
  return tx


__all__ = ['OPTIMIZERS', 'adamp', 'build_optimizer', 'norm_mask', 'sam_gradient',
           'sam_mask', 'sgdp', 'stable_spam', 'weight_decay_mask']
