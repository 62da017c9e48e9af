"""The train state, the step's static options, and the pure train/eval steps.

``train_step`` is a module-level pure function: the training loop jits it once
(``make_train_step``, state donated) and tests, notebooks, analyses and
benchmarks call the very same function. Nothing here knows about the loop,
checkpoints or configs files; ``StepOptions.from_config`` reads the few fields
the step needs.
"""

import dataclasses
import functools
from typing import Callable, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dynamics import losses
from dynamics import metrics as metrics_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics.types import Batch, PyTree

Metrics = Dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree.

  Attributes:
    step: number of completed updates.
    params: the model parameters (``variables['params']``).
    opt_state: the optax state.
    model_state: the model's other variable collections (e.g. BatchNorm's
      ``batch_stats``); ``{}`` for stateless models.
    rng: base key; step ``t`` uses ``fold_in(rng, t)``, so any step replays.
    ema_params: exponential moving average of ``params`` (None when off).
  """
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  rng: jax.Array
  ema_params: Optional[PyTree] = None


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Static (hashable) settings of the train step, read once from config.

  Attributes:
    loss: 'cross_entropy' or 'mse'.
    z_loss: coefficient of the ``log^2 Z`` auxiliary loss.
    softmax: 'softmax' or 'stablemax' (see `dynamics.losses`).
    sam_rho, sam_adaptive, sam_eta, sam_mask, sam_microbatches, sam_all_leaves:
      the SAM gradient estimator (``sam_rho=None``: plain gradients).
    ema_decay: decay of the parameters' EMA (None: off).
    log_per_layer: also measure per-parameter norms and the sown probes.
    log_every, num_steps: norms are measured only on the steps the loop logs
      (after update ``t + 1`` when ``(t + 1) % log_every == 0``, and the last).
  """
  loss: str = 'cross_entropy'
  z_loss: float = 0.0
  softmax: str = 'softmax'
  sam_rho: Optional[float] = None
  sam_adaptive: bool = False
  sam_eta: float = 0.0
  sam_mask: str = 'all'
  sam_microbatches: int = 1
  ema_decay: Optional[float] = None
  log_per_layer: bool = False
  log_every: int = 1
  num_steps: Optional[int] = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, task: str
                  ) -> 'StepOptions':
    s = config.optimizer.sam
    return cls(loss=losses.resolve_loss_name(config.loss.name, task),
               z_loss=float(config.loss.z_loss), softmax=config.model.softmax,
               sam_rho=None if s.rho is None else float(s.rho),
               sam_adaptive=bool(s.adaptive), sam_eta=float(s.eta),
               sam_mask=s.mask, sam_microbatches=int(s.num_microbatches),
               ema_decay=config.ema.decay, log_per_layer=config.log_per_layer,
               log_every=config.log_every, num_steps=config.num_steps)


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               options: StepOptions) -> Tuple[TrainState, Metrics]:
  """One optimizer update. Pure: the same inputs give the same bits.

  Args:
    state: the state after ``state.step`` updates.
    batch: ``{'inputs', 'targets'}`` arrays.
    model, tx, schedule, options: static parts (bind them with
      ``functools.partial`` and jit once; see `make_train_step`).

  Returns:
    ``(new_state, metrics)``: metrics are scalars of this update: the loss
    and accuracy of ``batch`` before the update, the learning rate used, and
    global gradient / parameter / update norms (per parameter as well with
    ``options.log_per_layer``) on logged steps.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, b):
    return losses.compute_loss(model, params, state.model_state, b, rng,
                               options, train=True)

  if options.sam_rho is None:
    (_, (model_state, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, batch)
  else:
    (_, (model_state, metrics)), grads = optim_lib.sam_gradient(
        loss_fn, state.params, batch, rho=options.sam_rho,
        adaptive=options.sam_adaptive, eta=options.sam_eta,
        mask=optim_lib.sam_mask(options.sam_mask),
        num_microbatches=options.sam_microbatches, has_aux=True)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics)
  metrics['learning_rate'] = jnp.asarray(schedule(state.step), jnp.float32)

  def measure():
    m = metrics_lib.step_norms(state.params, grads, updates,
                               options.log_per_layer)
    if options.log_per_layer:
      m.update(parametrization.rotation_metrics(
          state.params, params, metrics['learning_rate']))
    return m

  metrics.update(_on_logged_steps(measure, state.step, options))
  ema_params = state.ema_params
  if options.ema_decay is not None:
    ema_params = optax.incremental_update(params, ema_params,
                                          1.0 - options.ema_decay)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, model_state=model_state,
                            ema_params=ema_params)
  return new_state, metrics


def _on_logged_steps(measure: Callable[[], Metrics], step: jax.Array,
                     options: StepOptions) -> Metrics:
  """``measure()`` on the steps the loop logs, zeros elsewhere.

  On a small model the norms cost as much as the update itself; the loop
  writes them only every ``log_every`` steps, so the others skip the work
  (``lax.cond`` runs one branch). The update is computed outside, so its
  bits do not depend on this.
  """
  if options.log_every == 1:
    return measure()
  done = step + 1
  logged = done % options.log_every == 0
  if options.num_steps is not None:
    logged = logged | (done == options.num_steps)
  zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                               jax.eval_shape(measure))
  return jax.lax.cond(logged, measure, zeros)


def eval_step(params: PyTree, model_state: PyTree, batch: Batch, *,
              model: nn.Module, options: StepOptions) -> Metrics:
  """Loss (and accuracy) of ``batch`` in inference mode."""
  _, (_, metrics) = losses.compute_loss(model, params, model_state, batch,
                                        None, options, train=False)
  return metrics


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, options: StepOptions,
                    shardings=None
                    ) -> Callable[[TrainState, Batch], Tuple[TrainState, Metrics]]:
  """``train_step`` bound to its static parts, jitted, state donated.

  With ``shardings`` (a `dynamics.sharding.TrainShardings`) the state and
  batch are laid out by ``jax.jit`` in/out shardings: the batch split over the
  mesh, the state replicated or FSDP-sharded, the metrics replicated.
  """
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                           options=options)
  if shardings is not None:
    from dynamics import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    return sharding_lib.jit_sharded(step, shardings)
  return jax.jit(step, donate_argnums=0)


def make_eval_step(model: nn.Module, options: StepOptions, shardings=None
                   ) -> Callable[[PyTree, PyTree, Batch], Metrics]:
  """``eval_step`` bound to its static parts, jitted."""
  fn = functools.partial(eval_step, model=model, options=options)
  if shardings is not None:  # Metrics replicated: every process can read them.
    return jax.jit(fn, out_shardings=shardings.replicated)
  return jax.jit(fn)
