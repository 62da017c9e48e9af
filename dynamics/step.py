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
    sam: the SAM gradient estimator (`dynamics.optim.SamOptions`;
      ``sam.rho=None``: plain gradients).
    ema_decay: decay of the parameters' EMA (None: off).
    log_per_layer: also measure per-parameter norms and the sown probes.
    log_every, num_steps: norms are measured only on the steps the loop logs
      (after update ``t + 1`` when ``(t + 1) % log_every == 0``, and the last).
    grad_accum_steps: micro-batches per update (`accumulated_gradient`).
    vocab_chunk: cross-entropy by vocabulary chunks (``loss.vocab_chunk``;
      `dynamics.chunked_loss`); None: from the model's logits.
    loss_in_update: pass the optimizer the training loss of the whole batch
      as ``obj_fn`` (sophia's Hessian estimate; `optim.NEEDS_LOSS`).
  """
  loss: str = 'cross_entropy'
  z_loss: float = 0.0
  softmax: str = 'softmax'
  sam: optim_lib.SamOptions = optim_lib.SamOptions()
  ema_decay: Optional[float] = None
  log_per_layer: bool = False
  log_every: int = 1
  num_steps: Optional[int] = None
  grad_accum_steps: int = 1
  vocab_chunk: Optional[int] = None
  loss_in_update: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, task: str
                  ) -> 'StepOptions':
    return cls(loss=losses.resolve_loss_name(config.loss.name, task),
               z_loss=float(config.loss.z_loss), softmax=config.model.softmax,
               sam=optim_lib.SamOptions.from_config(config.optimizer.sam),
               ema_decay=config.ema.decay, log_per_layer=config.log_per_layer,
               log_every=config.log_every, num_steps=config.num_steps,
               grad_accum_steps=int(config.optimizer.grad_accum_steps),
               vocab_chunk=config.loss.vocab_chunk,
               loss_in_update=config.optimizer.name in optim_lib.NEEDS_LOSS)


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
  model_state, metrics, grads = accumulated_gradient(
      state.params, state.model_state, batch, rng, model=model,
      options=options)
  extra = {}
  if options.loss_in_update:
    extra['obj_fn'] = lambda p: losses.compute_loss(
        model, p, state.model_state, batch, rng, options, train=True)[0]
  updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                 **extra)
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


def _gradient(params: PyTree, model_state: PyTree, batch: Batch,
              rng: jax.Array, model: nn.Module, options: StepOptions
              ) -> Tuple[PyTree, Metrics, PyTree]:
  """``(new_model_state, metrics, gradient)`` of one (micro-)batch: plain, or
  SAM's when ``options.sam.rho`` is set."""

  def loss_fn(p, b):
    return losses.compute_loss(model, p, model_state, b, rng, options,
                               train=True)

  s = options.sam
  if s.rho is None:
    (_, (model_state, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch)
  else:
    (_, (model_state, metrics)), grads = optim_lib.sam_gradient(
        loss_fn, params, batch, rho=s.rho, adaptive=s.adaptive, eta=s.eta,
        mask=optim_lib.sam_mask(s.mask), num_microbatches=s.num_microbatches,
        has_aux=True, normalize=s.normalize, all_leaves=s.all_leaves)
  return model_state, metrics, grads


def accumulated_gradient(params: PyTree, model_state: PyTree, batch: Batch,
                         rng: jax.Array, *, model: nn.Module,
                         options: StepOptions
                         ) -> Tuple[PyTree, Metrics, PyTree]:
  r"""The batch's gradient, accumulated over ``k = options.grad_accum_steps``
  micro-batches with the memory of one.

  .. math:: g = \frac{1}{k} \sum_{j=0}^{k-1} \nabla L_{B_j}(w),
     \qquad B_j = \{\text{rows } r : r \bmod k = j\},

  equal to the whole batch's gradient (each loss is a mean over equally many
  examples and tokens) up to float summation order. A ``lax.scan`` runs the
  micro-batches one after the other, so the activations of only one are
  alive. Micro-batch ``j`` takes every ``k``-th row, so on a mesh each device
  keeps its own rows (no data moves). The metrics (loss, accuracy, per-layer
  probes) are means over the micro-batches; model state (BatchNorm
  statistics) is threaded through them in order; dropout draws from
  ``fold_in(rng, j)`` in micro-batch ``j``. With ``k = 1`` this is the plain
  gradient, bit for bit.

  What accumulation means for the gradient estimators and optimizers:

  * SAM: each micro-batch is perturbed along its own gradient, so the update
    is m-sharpness with ``m`` = the micro-batch (split further by
    ``sam.num_microbatches``), not SAM on the whole batch.
  * Stable-SPAM (and every optimizer): the optimizer runs once per update on
    the accumulated gradient, so its spike clipping and gradient-norm
    statistics see one (mean) gradient per update, as without accumulation.

  Args:
    params, model_state: the state's parameters and other collections.
    batch: ``{'inputs', 'targets'}`` whose leading axis ``k`` divides.
    rng: this step's key.
    model, options: the static parts of the step.

  Returns:
    ``(new_model_state, metrics, gradient)``.

  Example:
    >>> from dynamics.models import MLP
    >>> model = MLP(hidden_sizes=(3,), num_outputs=1)
    >>> params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))['params']
    >>> batch = {'inputs': jnp.arange(8.).reshape(4, 2),
    ...          'targets': jnp.arange(4.).reshape(4, 1)}
    >>> g1, g4 = (accumulated_gradient(
    ...     params, {}, batch, jax.random.PRNGKey(1), model=model,
    ...     options=StepOptions(loss='mse', grad_accum_steps=k))[2]
    ...     for k in (1, 4))
    >>> jax.tree.all(jax.tree.map(
    ...     lambda a, b: bool(jnp.allclose(a, b, rtol=1e-5, atol=1e-7)), g1, g4))
    True
  """
  k = options.grad_accum_steps
  if k == 1:
    return _gradient(params, model_state, batch, rng, model, options)

  def split(x):  # (B, ...) -> (k, B / k, ...); micro-batch j is rows j::k.
    x = jnp.asarray(x)
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

  def body(carry, xs):
    model_state, total = carry
    micro, j = xs
    model_state, metrics, grads = _gradient(
        params, model_state, micro, jax.random.fold_in(rng, j), model,
        options)
    return (model_state, jax.tree.map(jnp.add, total, grads)), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (model_state, total), metrics = jax.lax.scan(
      body, (model_state, zeros), (jax.tree.map(split, batch), jnp.arange(k)))
  grads = jax.tree.map(lambda g: g / k, total)
  return (model_state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics),
          grads)


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
