"""Optimizers as optax ``GradientTransformation``s, built from config.

`OPTIMIZERS` is the registry: each optimizer's name (``config.optimizer.name``)
maps to its `Entry` -- how to build it from its own config section
``config.optimizer.<name>`` (declared in ``dynamics/config_schema.py``), its
family (which muP learning-rate rule applies) and the check of its section.
Adding an optimizer is its module, one entry here and one section there.

``build_optimizer(config.optimizer, schedule)`` returns the selected
optimizer with the shared options around it (clipping, ⊥Grad, per-layer
learning-rate multipliers). SAM-type methods are not optimizers but gradient
estimators: the train step calls ``sam_gradient`` with its `SamOptions` and
feeds the gradient to whatever optimizer is configured.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import ml_collections
import optax
from absl import logging

from dynamics import config_migrate
from dynamics import errors
from dynamics.config_migrate import migrate_flat_fields
from dynamics.optim import catalog
from dynamics.optim.catalog import NEEDS_LOSS
from dynamics.optim.adamp import adamp, sgdp
from dynamics.optim.multipliers import scale_by_lr_multipliers
from dynamics.optim.orthograd import orthograd
from dynamics.optim.sam import (SAM_MASKS, SamOptions, norm_mask, sam_gradient,
                                sam_mask)
from dynamics.optim.soap import check_section as check_soap, soap
from dynamics.optim.stable_spam import stable_spam

# ``build(hyper, opt_config, learning_rate)``: ``hyper`` is the optimizer's
# section, ``opt_config`` the whole ``config.optimizer`` (its shared fields).
Builder = Callable[[Any, Any, optax.ScalarOrSchedule],
                   optax.GradientTransformation]
# ``check(hyper, prefix)`` raises `ConfigError` naming ``<prefix>.<field>``.
Check = Callable[[Any, str], None]

# ``config.optimizer.weight_decay_mask``: the parameters weight decay acts on.
WEIGHT_DECAY_MASKS: Dict[str, Callable[[Any], Any]] = {
    'all': lambda params: jax.tree.map(lambda _: True, params),
    'matrices': lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One optimizer of the registry.

  Attributes:
    build: ``(hyper, opt_config, learning_rate) -> GradientTransformation``,
      ``hyper`` its section ``config.optimizer.<name>`` (`hyperparameters`).
    family: 'adam' (per-coordinate adaptive steps) or 'sgd': which muP
      learning-rate rule applies (``dynamics.parametrization.MUP_RULES``).
    check: ``(hyper, prefix) -> None``, raising ``ConfigError`` for an
      invalid value of the section (None: the optimizer has no section).
    eval_params: ``(opt_state, params) -> params`` where the model is
      evaluated (schedule-free: the averaged point); None: at ``params``.
  """
  build: Builder
  family: str
  check: Optional[Check] = None
  eval_params: Optional[Callable[[Any, Any], Any]] = None


def weight_decay_mask(kind: str) -> Callable[[Any], Any]:
  """Mask function for weight decay: 'all' or 'matrices' (ndim >= 2)."""
  if kind not in WEIGHT_DECAY_MASKS:
    raise ValueError(f'optimizer.weight_decay_mask must be one of '
                     f'{tuple(WEIGHT_DECAY_MASKS)}, got {kind!r}')
  return WEIGHT_DECAY_MASKS[kind]


def _coupled_l2(tx: optax.GradientTransformation, o: Any
                ) -> optax.GradientTransformation:
  """PyTorch's SGD/Adam ``weight_decay``: L2 added to the gradient (the
  optimizers that decouple it -- adamw, adamp, sgdp, stable_spam -- take it
  themselves)."""
  if not o.weight_decay:
    return tx
  return optax.chain(optax.add_decayed_weights(
      o.weight_decay, weight_decay_mask(o.weight_decay_mask)), tx)


def _adamp(h, o, lr):
  return adamp(lr, b1=h.b1, b2=h.b2, eps=h.eps, weight_decay=o.weight_decay,
               delta=h.delta, wd_ratio=h.wd_ratio, nesterov=h.nesterov,
               weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


def _sgdp(h, o, lr):
  return sgdp(lr, momentum=h.momentum, dampening=h.dampening,
              weight_decay=o.weight_decay, nesterov=h.nesterov, eps=h.eps,
              delta=h.delta, wd_ratio=h.wd_ratio,
              weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


def _stable_spam(h, o, lr):
  return stable_spam(lr, b1=h.b1, b2=h.b2, eps=h.eps,
                     weight_decay=o.weight_decay, gamma1=h.gamma1,
                     gamma2=h.gamma2, theta=h.theta,
                     reset_interval=h.reset_interval,
                     beta1_decay_steps=h.beta1_decay_steps,
                     beta1_decay_min=h.beta1_decay_min,
                     weight_decay_mask=weight_decay_mask(o.weight_decay_mask))


def _unit(h, prefix: str, *fields: str) -> None:
  for f in fields:
    errors.number(f'{prefix}.{f}', h[f], at_least=0, below=1)


def _check_momentum(h, prefix: str) -> None:
  _unit(h, prefix, 'momentum')
  errors.boolean(f'{prefix}.nesterov', h.nesterov)


def _check_adam(h, prefix: str) -> None:
  _unit(h, prefix, 'b1', 'b2')
  errors.number(f'{prefix}.eps', h.eps, at_least=0)


def _check_projection(h, prefix: str) -> None:
  """AdamP / SGDP's projection: cosine threshold and weight-decay ratio."""
  errors.number(f'{prefix}.delta', h.delta, at_least=0)
  errors.number(f'{prefix}.wd_ratio', h.wd_ratio, at_least=0)
  errors.boolean(f'{prefix}.nesterov', h.nesterov)


def _check_adamp(h, prefix: str) -> None:
  _check_adam(h, prefix)
  _check_projection(h, prefix)


def _check_sgdp(h, prefix: str) -> None:
  _unit(h, prefix, 'momentum')
  errors.number(f'{prefix}.dampening', h.dampening, at_least=0, at_most=1)
  errors.number(f'{prefix}.eps', h.eps, at_least=0)
  _check_projection(h, prefix)


def _check_stable_spam(h, prefix: str) -> None:
  _check_adam(h, prefix)
  _unit(h, prefix, 'gamma1', 'gamma2', 'theta')
  errors.integer(f'{prefix}.reset_interval', h.reset_interval, 1)
  errors.integer(f'{prefix}.beta1_decay_steps', h.beta1_decay_steps, 1,
                 optional=True)
  errors.number(f'{prefix}.beta1_decay_min', h.beta1_decay_min, at_least=0,
                at_most=1)


def _catalog(name: str) -> Builder:
  """``catalog.<name>`` with the weight-decay mask of ``o``."""
  fn = getattr(catalog, name)
  return lambda h, o, lr: fn(h, o, lr, weight_decay_mask(o.weight_decay_mask))


OPTIMIZERS: Dict[str, Entry] = {
    'sgd': Entry(lambda h, o, lr: _coupled_l2(optax.sgd(lr), o), 'sgd'),
    'momentum': Entry(lambda h, o, lr: _coupled_l2(optax.sgd(
        lr, momentum=h.momentum, nesterov=h.nesterov), o), 'sgd',
                      _check_momentum),
    'adam': Entry(lambda h, o, lr: _coupled_l2(optax.adam(
        lr, b1=h.b1, b2=h.b2, eps=h.eps), o), 'adam', _check_adam),
    'adamw': Entry(lambda h, o, lr: optax.adamw(
        lr, b1=h.b1, b2=h.b2, eps=h.eps, weight_decay=o.weight_decay,
        mask=weight_decay_mask(o.weight_decay_mask)), 'adam', _check_adam),
    'adamp': Entry(_adamp, 'adam', _check_adamp),
    'sgdp': Entry(_sgdp, 'sgd', _check_sgdp),
    'stable_spam': Entry(_stable_spam, 'adam', _check_stable_spam),
    # Today's optimizers by their optax names (dynamics/optim/catalog.py).
    **{name: Entry(_catalog(name), family, check, eval_fn)
       for name, family, check, eval_fn in (
           ('nadamw', 'adam', catalog.check_adam, None),
           ('lion', 'adam', catalog.check_lion, None),
           ('adafactor', 'adam', catalog.check_adafactor, None),
           ('muon', 'adam', catalog.check_muon, None),
           ('schedule_free_adamw', 'adam', catalog.check_schedule_free_adamw,
            catalog.schedule_free_eval),
           ('ademamix', 'adam', catalog.check_ademamix, None),
           ('adopt', 'adam', catalog.check_adopt, None),
           ('prodigy', 'adam', catalog.check_prodigy, None),
           ('signum', 'adam', catalog.check_signum, None),
           ('sophia', 'adam', catalog.check_sophia, None))},
    # SOAP (dynamics/optim/soap.py): Adam in Shampoo's eigenbasis.
    'soap': Entry(lambda h, o, lr: soap(
        lr, b1=h.b1, b2=h.b2, shampoo_beta=h.shampoo_beta, eps=h.eps,
        weight_decay=o.weight_decay,
        precondition_frequency=h.precondition_frequency,
        max_precond_dim=h.max_precond_dim, merge_dims=h.merge_dims,
        precondition_1d=h.precondition_1d, normalize_grads=h.normalize_grads,
        correct_bias=h.correct_bias,
        weight_decay_mask=weight_decay_mask(o.weight_decay_mask)), 'adam',
                  check_soap),
}


def _entry(name: str) -> Entry:
  if name not in OPTIMIZERS:
    raise ValueError(f'optimizer.name must be one of {tuple(OPTIMIZERS)}, '
                     f'got {name!r}')
  return OPTIMIZERS[name]


def hyperparameters(opt_config: Any) -> ml_collections.ConfigDict:
  """The selected optimizer's own section, ``opt_config[opt_config.name]``
  (empty for an optimizer without one, e.g. sgd).

  Deprecated flat fields still set (a config built without `validate`,
  which moves them) apply too, with a warning: the section comes back as a
  copy holding them.

  Example:
    >>> from dynamics import config_schema
    >>> hyperparameters(config_schema.defaults().optimizer).b2   # adamw's
    0.95
  """
  _entry(opt_config.name)
  if config_migrate.set_flat_fields(opt_config):
    opt_config = ml_collections.ConfigDict(opt_config.to_dict())
    for notice in config_migrate.resolve_deprecated_optimizer(opt_config):
      logging.warning(notice)
  if opt_config.name in opt_config:
    return opt_config[opt_config.name]
  return ml_collections.ConfigDict()


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
  entry = _entry(opt_config.name)
  tx = entry.build(hyperparameters(opt_config), opt_config, schedule)
  if opt_config.lr_multipliers:
    tx = optax.chain(tx, scale_by_lr_multipliers(opt_config.lr_multipliers))
  if opt_config.clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.clip_norm), tx)
  if opt_config.orthograd:
    tx = optax.chain(orthograd(), tx)
  return tx


def eval_params(opt_config: Any, opt_state: Any, params: Any) -> Any:
  """The parameters at which the model is evaluated: ``params``, or the
  optimizer's evaluation point (its entry's ``eval_params``: schedule-free
  AdamW's averaged iterate ``x``)."""
  fn = _entry(opt_config.name).eval_params
  return params if fn is None else fn(opt_state, params)


def _check_sam(s: Any) -> None:
  errors.number('optimizer.sam.rho', s.rho, at_least=0, optional=True)
  errors.boolean('optimizer.sam.adaptive', s.adaptive)
  errors.number('optimizer.sam.eta', s.eta, at_least=0)
  errors.boolean('optimizer.sam.all_leaves', s.all_leaves)
  errors.boolean('optimizer.sam.normalize', s.normalize)
  errors.one_of('optimizer.sam.mask', s.mask, SAM_MASKS)
  errors.integer('optimizer.sam.num_microbatches', s.num_microbatches, 1)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for an invalid ``config.optimizer`` field: the
  shared ones, the selected optimizer's section (its entry's check) and
  SAM's."""
  o = config.optimizer
  errors.one_of('optimizer.name', o.name, OPTIMIZERS)
  errors.number('optimizer.learning_rate', o.learning_rate, above=0)
  errors.number('optimizer.weight_decay', o.weight_decay, at_least=0)
  errors.one_of('optimizer.weight_decay_mask', o.weight_decay_mask,
                WEIGHT_DECAY_MASKS)
  errors.number('optimizer.clip_norm', o.clip_norm, above=0, optional=True)
  errors.boolean('optimizer.orthograd', o.orthograd)
  errors.integer('optimizer.grad_accum_steps', o.grad_accum_steps, 1)
  if o.lr_multipliers is not None:
    ok = all(len(rule) == 2 and isinstance(rule[0], str)
             and float(rule[1]) > 0 for rule in o.lr_multipliers)
    errors.require(ok, 'optimizer.lr_multipliers', o.lr_multipliers,
                   'must be None or ((regex, multiplier > 0), ...) pairs')
  entry = OPTIMIZERS[o.name]
  if entry.check is not None:
    entry.check(hyperparameters(o), f'optimizer.{o.name}')
  _check_sam(o.sam)


__all__ = ['Entry', 'NEEDS_LOSS', 'OPTIMIZERS', 'SAM_MASKS', 'SamOptions',
           'WEIGHT_DECAY_MASKS', 'adamp', 'build_optimizer', 'check',
           'eval_params',
           'hyperparameters', 'migrate_flat_fields', 'norm_mask',
           'sam_gradient', 'sam_mask', 'sgdp', 'stable_spam',
           'weight_decay_mask']
