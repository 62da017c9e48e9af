"""The static pieces a config builds (dataset, model, schedule, optimizer,
step options), the state at step 0, the functions of the parameters, and the
loop's evaluation.

`dynamics.runs.Run` builds them once per run; they know nothing of run
directories.
"""

import functools
from typing import Callable, Dict, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dynamics import data as data_lib
from dynamics import losses
from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import schedules as schedules_lib
from dynamics import step as step_lib
from dynamics.types import ApplyFn, Batch, LossFn, PyTree


class Parts(NamedTuple):
  """The static pieces a config builds: what ``train_step`` is partial over."""
  dataset: data_lib.Dataset
  model: nn.Module
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  options: step_lib.StepOptions


def build(config: ml_collections.ConfigDict) -> Parts:
  """Dataset, model, schedule, optimizer and step options of a config."""
  dataset = data_lib.get_dataset(config)
  model = models_lib.build_model(config.model, dataset.info)
  schedule = schedules_lib.from_config(config)
  tx = optim_lib.build_optimizer(parametrization.optimizer_config(config),
                                 schedule)
  options = step_lib.StepOptions.from_config(config, dataset.info.task)
  return Parts(dataset, model, schedule, tx, options)


def init_state(config: ml_collections.ConfigDict, parts: Parts
               ) -> step_lib.TrainState:
  """The state at step 0 (deterministic in ``config.seed``)."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  example = parts.dataset.eval_batch(0)['inputs'][:1]
  # Jitted: op-by-op init of a transformer costs ~100 small compiles.
  init = jax.jit(functools.partial(parts.model.init, train=False))
  variables = init({'params': init_key, 'dropout': init_key},
                   jnp.asarray(example))
  variables = flax.core.unfreeze(variables)
  params = models_lib.cast_params(variables.pop('params'),
                                  config.model.param_dtype)
  # A copy, not an alias: the donated state must not hold one buffer twice.
  ema = (jax.tree.map(jnp.copy, params) if config.ema.decay is not None
         else None)
  return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=parts.tx.init(params),
                             model_state=variables, rng=rng, ema_params=ema)


def eval_params(config: ml_collections.ConfigDict, opt_state: PyTree,
                params: PyTree) -> PyTree:
  """Where the model is evaluated: ``params``, or the optimizer's evaluation
  point (`dynamics.optim.eval_params`: schedule-free AdamW's averaged
  iterate ``x``; the state's ``params`` are its gradient point ``y``)."""
  return optim_lib.eval_params(config.optimizer, opt_state, params)


def eval_point(config: ml_collections.ConfigDict,
               restore: Callable[[tuple], Dict[str, PyTree]]) -> PyTree:
  """`eval_params` of a checkpoint, ``restore(fields)`` reading only the
  state fields it needs (the optimizer state only where the point depends on
  it; ``Run.restore(step)['params']`` is the raw ``params``)."""
  if optim_lib.OPTIMIZERS[config.optimizer.name].eval_params is None:
    return restore(('params',))['params']
  state = restore(('params', 'opt_state'))
  return eval_params(config, state['opt_state'], state['params'])


def loss_fn(parts: Parts, model_state: PyTree = None) -> LossFn:
  """``(params, batch) -> loss`` in inference mode (deterministic)."""
  model_state = {} if model_state is None else model_state

  def fn(params, batch):
    return losses.compute_loss(parts.model, params, model_state, batch, None,
                               parts.options, train=False)[0]
  return fn


def apply_fn(parts: Parts, model_state: PyTree = None) -> ApplyFn:
  """``(params, inputs) -> outputs`` in inference mode."""
  model_state = {} if model_state is None else model_state

  def fn(params, inputs):
    return parts.model.apply({'params': params, **model_state}, inputs,
                             train=False)
  return fn


def output_loss_fn(parts: Parts) -> Callable[[jax.Array, Batch], jax.Array]:
  """``(outputs, batch) -> loss``, the loss as a function of the outputs."""
  options = parts.options

  def fn(outputs, batch):
    return losses.loss_from_outputs(outputs, batch['targets'], options)[0]
  return fn


def evaluate(params: PyTree, model_state: PyTree, dataset: data_lib.Dataset,
             eval_fn, num_batches: int,
             put: Optional[Callable[[Batch], Batch]] = None) -> Dict[str, float]:
  """Mean eval metrics over the first ``num_batches`` held-out batches.

  ``put`` places a (whole, host) batch on the devices (default: ``jnp``).
  """
  put = put or (lambda b: jax.tree.map(jnp.asarray, b))
  totals: Dict[str, float] = {}
  for i in range(num_batches):
    m = jax.device_get(eval_fn(params, model_state, put(dataset.eval_batch(i))))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / num_batches
  return totals
