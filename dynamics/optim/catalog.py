r"""Today's optimizers by their optax names: builders and checks of the catalog.

Each builder takes the optimizer's section ``h`` (``config.optimizer.<name>``),
the shared fields ``o`` (``config.optimizer``: weight decay and its mask) and
the learning-rate schedule, and returns optax's own transformation, called
with those arguments. Where optax's function has no weight-decay mask (or no
decay), the decay is added the way ``optax.adamw`` adds it, between the
direction and the learning rate, from optax's pieces
(``optax.add_decayed_weights(wd, mask)``; the identity at ``wd = 0``, so the
update equals optax's function then):

=====================  =====================================================
name                   optax function
=====================  =====================================================
nadamw                 ``optax.nadamw``
lion                   ``optax.lion``
adafactor              ``optax.adafactor`` (decay not scaled by the rate)
muon                   ``optax.contrib.muon`` (AdamW for the other leaves)
schedule_free_adamw    ``optax.contrib.schedule_free_adamw`` (+ decay mask)
ademamix               ``optax.contrib.ademamix``
adopt                  ``optax.contrib.adopt`` (+ decoupled decay)
prodigy                ``optax.contrib.prodigy``
signum                 ``optax.signum`` (+ decoupled decay)
sophia                 ``optax.contrib.sophia`` (Hutchinson estimator)
=====================  =====================================================

``sophia`` (``optax.contrib.sophia``) needs the loss itself in its update
(``obj_fn``, for Hutchinson's Hessian diagonal): the train step passes it
for the names in `NEEDS_LOSS`.

Schedule-free AdamW is evaluated at its averaged point
:math:`x_t` (`schedule_free_eval`), not at the gradient point :math:`y_t`
the state holds as ``params``: the registry entry's ``eval_params`` says so,
and the loop's evaluation, ``Run.params`` and `dynamics.parts.eval_params`
apply it.
What a WSD branch means for it: the branch restores the parent's whole
schedule-free state (:math:`z`, the averaging weight sum, the step count,
the second moment) and continues it with the branch's learning rate; the
schedule multiplies the steps of :math:`z` (a decay shrinks them), while the
averaging weight :math:`c_{t+1} = \eta_{\max}^2 / \sum \eta_{\max}^2` uses
the running maximum rate, so a decay does not down-weight the late iterates
(optax's rule). Its authors train it with warmup then a constant rate:
``schedule.name='constant'``.

References:
  Loshchilov & Hutter, Decoupled Weight Decay Regularization (2019);
  Dozat, Incorporating Nesterov Momentum into Adam (2016);
  Chen et al., Symbolic Discovery of Optimization Algorithms (2023);
  Shazeer & Stern, Adafactor (2018); Jordan et al., Muon (2024);
  Defazio et al., The Road Less Scheduled (2024);
  Pagliardini et al., The AdEMAMix Optimizer (2024);
  Taniguchi et al., ADOPT (2024); Mishchenko & Defazio, Prodigy (2023);
  Bernstein et al., signSGD (2018); Liu et al., Sophia (2023).
"""

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from dynamics import errors
from dynamics.types import PyTree, param_name

MaskFn = Callable[[PyTree], PyTree]

# Optimizers whose update takes the loss (``obj_fn``): the train step passes
# the whole batch's training loss (`dynamics.step.StepOptions.loss_in_update`).
NEEDS_LOSS = frozenset({'sophia'})


def _decayed(direction: optax.GradientTransformation, wd: float,
             mask: MaskFn, lr: optax.ScalarOrSchedule
             ) -> optax.GradientTransformation:
  """``chain(direction, add_decayed_weights(wd, mask), scale_by_lr(lr))``:
  how optax's adamw and lion add decoupled weight decay."""
  return optax.chain(direction, optax.add_decayed_weights(wd, mask),
                     optax.scale_by_learning_rate(lr))


def nadamw(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  return optax.nadamw(lr, b1=h.b1, b2=h.b2, eps=h.eps,
                      weight_decay=o.weight_decay, mask=mask)


def lion(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  return optax.lion(lr, b1=h.b1, b2=h.b2, weight_decay=o.weight_decay,
                    mask=mask)


def adafactor(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  """optax's Adafactor; its weight decay is added after the learning rate
  (``p <- p - lr * u - wd * p``), optax's convention."""
  return optax.adafactor(
      lr, min_dim_size_to_factor=h.min_dim_size_to_factor,
      decay_rate=h.decay_rate, decay_offset=h.decay_offset,
      multiply_by_parameter_scale=h.multiply_by_parameter_scale,
      clipping_threshold=h.clipping_threshold, momentum=h.momentum,
      weight_decay_rate=o.weight_decay or None, eps=h.eps,
      factored=h.factored, weight_decay_mask=mask)


def muon_dimension_numbers(adam_params: str) -> Callable[[PyTree], PyTree]:
  """Which leaves Muon orthogonalizes: every 2-D leaf whose name
  (`dynamics.types.param_name`) does not fully match ``adam_params``, as an
  (input, output) matrix; None (AdamW) for the others -- 1-D leaves, the
  transformer's 3-D/4-D attention kernels, and the embeddings and head,
  which Muon's authors leave to AdamW."""
  pattern = re.compile(adam_params)

  def fn(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, p: (optax.contrib.MuonDimensionNumbers()
                         if p.ndim == 2 and not pattern.fullmatch(
                             param_name(path)) else None), params)
  return fn


def muon(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  """``optax.contrib.muon``: Newton-Schulz-orthogonalized momentum on the
  matrices, optax's AdamW (same rate, ``adam_b1/b2``, decay
  ``adam_weight_decay`` on all its leaves) on the rest."""
  return optax.contrib.muon(
      lr, ns_steps=h.ns_steps, beta=h.beta, eps=h.eps,
      weight_decay=o.weight_decay, weight_decay_mask=mask,
      nesterov=h.nesterov, adam_b1=h.adam_b1, adam_b2=h.adam_b2,
      adam_weight_decay=h.adam_weight_decay,
      muon_weight_dimension_numbers=muon_dimension_numbers(h.adam_params),
      consistent_rms=h.consistent_rms)


def schedule_free_adamw(h, o, lr, mask: MaskFn
                        ) -> optax.GradientTransformation:
  """``optax.contrib.schedule_free_adamw(lr, ...)`` with the decay mask: its
  own chain (RMS scaling, decay, rate) wrapped by ``schedule_free``."""
  base = optax.chain(
      optax.scale_by_rms(decay=h.b2, eps=h.eps, eps_in_sqrt=False,
                         bias_correction=True),
      optax.add_decayed_weights(o.weight_decay, mask),
      optax.scale_by_learning_rate(lr))
  return optax.contrib.schedule_free(base, learning_rate=lr, b1=h.b1,
                                     weight_lr_power=h.weight_lr_power)


def ademamix(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  return optax.contrib.ademamix(lr, b1=h.b1, b2=h.b2, b3=h.b3, alpha=h.alpha,
                                eps=h.eps, weight_decay=o.weight_decay,
                                mask=mask)


def adopt(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  return _decayed(optax.contrib.scale_by_adopt(
      b1=h.b1, b2=h.b2, eps=h.eps, nesterov=h.nesterov,
      use_clipping=h.use_clipping), o.weight_decay, mask, lr)


def prodigy(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  """``optax.contrib.prodigy``; ``learning_rate`` multiplies its estimated
  step size (1.0 is the authors' setting). Its weight decay acts on every
  parameter (optax has no mask for it)."""
  if o.weight_decay and o.weight_decay_mask != 'all':
    raise errors.ConfigError(
        f'config.optimizer.weight_decay_mask={o.weight_decay_mask!r}: prodigy '
        "decays every parameter (optax.contrib.prodigy has no mask); use 'all'"
        ' or weight_decay=0')
  tx = optax.contrib.prodigy(
      lr, betas=(h.b1, h.b2), beta3=h.beta3, eps=h.eps, estim_lr0=h.estim_lr0,
      estim_lr_coef=h.estim_lr_coef, weight_decay=o.weight_decay,
      safeguard_warmup=h.safeguard_warmup)
  # Its state keeps the initial parameters: a copy, not an alias, since the
  # train step donates the state (one buffer must not be donated twice).
  return optax.GradientTransformationExtraArgs(
      lambda params: tx.init(jax.tree.map(jnp.copy, params)), tx.update)


def signum(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  """``optax.signum``'s chain (EMA, sign) with decoupled decay."""
  return _decayed(optax.chain(optax.ema(h.beta, debias=False),
                              optax.scale_by_sign()),
                  o.weight_decay, mask, lr)


def sophia(h, o, lr, mask: MaskFn) -> optax.GradientTransformation:
  """``optax.contrib.sophia`` (Sophia-H: Hutchinson's Hessian diagonal every
  ``update_interval`` steps, from the loss the train step passes as
  ``obj_fn`` -- the whole batch's, also under gradient accumulation)."""
  return optax.contrib.sophia(
      lr, b1=h.b1, b2=h.b2, eps=h.eps, weight_decay=o.weight_decay,
      weight_decay_mask=mask, gamma=h.gamma, clip_threshold=h.clip_threshold,
      update_interval=h.update_interval)


def schedule_free_eval(opt_state: Any, params: PyTree) -> PyTree:
  r"""The schedule-free averaged point :math:`x_t = (y_t - (1-\beta_1) z_t)
  / \beta_1` (``optax.contrib.schedule_free_eval_params``), from the
  ``ScheduleFreeState`` wherever it sits in a chained ``opt_state``.

  Raises:
    ValueError: ``opt_state`` holds no ``ScheduleFreeState``.

  Example (two steps of ``g = 1`` from ``y = 1`` at rate 0.1: the averaged
  point ``x`` lags behind the gradient point ``y``):
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0),
    ...                  optax.contrib.schedule_free_adamw(0.1))
    >>> y = {'w': jnp.ones(2)}
    >>> state = tx.init(y)
    >>> for _ in range(2):
    ...   u, state = tx.update({'w': jnp.ones(2)}, state, y)
    ...   y = optax.apply_updates(y, u)
    >>> x = schedule_free_eval(state, y)
    >>> print(f"y = {float(y['w'][0]):.4f}, x = {float(x['w'][0]):.4f}")
    y = 0.8450, x = 0.8500
  """
  kind = optax.contrib.ScheduleFreeState
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(s, kind)]
  if not found:
    raise ValueError('opt_state holds no ScheduleFreeState: not a '
                     'schedule-free optimizer state')
  return optax.contrib.schedule_free_eval_params(found[0], params)


# -- checks ------------------------------------------------------------------

def _unit(h, prefix: str, *fields: str) -> None:
  for f in fields:
    errors.number(f'{prefix}.{f}', h[f], at_least=0, below=1)


def _eps(h, prefix: str) -> None:
  errors.number(f'{prefix}.eps', h.eps, at_least=0)


def check_adam(h, prefix: str) -> None:
  _unit(h, prefix, 'b1', 'b2')
  _eps(h, prefix)


def check_lion(h, prefix: str) -> None:
  _unit(h, prefix, 'b1', 'b2')


def check_adafactor(h, prefix: str) -> None:
  errors.integer(f'{prefix}.min_dim_size_to_factor', h.min_dim_size_to_factor,
                 1)
  errors.number(f'{prefix}.decay_rate', h.decay_rate, above=0, at_most=1)
  errors.number(f'{prefix}.decay_offset', h.decay_offset, at_least=0)
  errors.boolean(f'{prefix}.multiply_by_parameter_scale',
                 h.multiply_by_parameter_scale)
  errors.number(f'{prefix}.clipping_threshold', h.clipping_threshold,
                above=0, optional=True)
  errors.number(f'{prefix}.momentum', h.momentum, at_least=0, below=1,
                optional=True)
  errors.number(f'{prefix}.eps', h.eps, above=0)
  errors.boolean(f'{prefix}.factored', h.factored)


def check_muon(h, prefix: str) -> None:
  _unit(h, prefix, 'beta', 'adam_b1', 'adam_b2')
  _eps(h, prefix)
  errors.integer(f'{prefix}.ns_steps', h.ns_steps, 1)
  errors.boolean(f'{prefix}.nesterov', h.nesterov)
  errors.number(f'{prefix}.adam_weight_decay', h.adam_weight_decay,
                at_least=0)
  errors.number(f'{prefix}.consistent_rms', h.consistent_rms, above=0,
                optional=True)
  try:
    re.compile(h.adam_params)
  except (re.error, TypeError) as e:
    raise errors.ConfigError(f'config.{prefix}.adam_params='
                             f'{h.adam_params!r}: not a regex ({e})') from None


def check_schedule_free_adamw(h, prefix: str) -> None:
  errors.number(f'{prefix}.b1', h.b1, above=0, below=1)  # x = (y - .) / b1.
  _unit(h, prefix, 'b2')
  _eps(h, prefix)
  errors.number(f'{prefix}.weight_lr_power', h.weight_lr_power, at_least=0)


def check_ademamix(h, prefix: str) -> None:
  _unit(h, prefix, 'b1', 'b2', 'b3')
  _eps(h, prefix)
  errors.number(f'{prefix}.alpha', h.alpha, at_least=0)


def check_adopt(h, prefix: str) -> None:
  check_adam(h, prefix)
  errors.boolean(f'{prefix}.nesterov', h.nesterov)
  errors.boolean(f'{prefix}.use_clipping', h.use_clipping)


def check_prodigy(h, prefix: str) -> None:
  check_adam(h, prefix)
  errors.number(f'{prefix}.beta3', h.beta3, at_least=0, below=1,
                optional=True)
  errors.number(f'{prefix}.estim_lr0', h.estim_lr0, above=0)
  errors.number(f'{prefix}.estim_lr_coef', h.estim_lr_coef, above=0)
  errors.boolean(f'{prefix}.safeguard_warmup', h.safeguard_warmup)


def check_signum(h, prefix: str) -> None:
  _unit(h, prefix, 'beta')


def check_sophia(h, prefix: str) -> None:
  check_adam(h, prefix)
  errors.number(f'{prefix}.gamma', h.gamma, above=0)
  errors.number(f'{prefix}.clip_threshold', h.clip_threshold, above=0,
                optional=True)
  errors.integer(f'{prefix}.update_interval', h.update_interval, 1)
