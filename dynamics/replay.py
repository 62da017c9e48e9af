r"""``train_step`` replayed over a table of batches in one ``lax.scan``.

The training loop calls the jitted `dynamics.step.train_step` once per update
from Python; `scan_train` runs the very same function over ``T`` stacked
batches inside one compiled ``lax.scan``, with the same bits (float32 on
CPU; see ``tests/test_replay.py``). Reproductions replay many schedules and
seeds with it, and the training Jacobian differentiates through it
(``checkpoint_every``: rematerialized steps, checkpointed segments).

A learning rate that changes per replay is a table, not a new schedule:
`table_schedule` reads update ``t``'s rate from ``rates_T[t]``, and
`make_scan_train` builds the run's optimizer around that schedule inside the
jitted function, so one compilation serves every table (every peak rate,
every schedule) and every seed. The optimizer's state is the one
``run.init_state()`` makes: the rate is read from the schedule at each
update, as in training (``optax.inject_hyperparams`` would change the state's
structure and the bits).
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import step as step_lib
from dynamics.types import Batch

Metrics = step_lib.Metrics
ScanTrainFn = Callable[[step_lib.TrainState, Batch, Any],
                       Tuple[step_lib.TrainState, Metrics]]


def table_schedule(rates_T: jax.Array) -> optax.Schedule:
  """``step -> rates_T[min(step, T - 1)]``: a schedule read from a table.

  ``rates_T`` may be traced (an argument of a jitted function): the
  optimizers' build-time check of ``schedule(0) >= 0`` lets a traced rate
  through, so check the table on the host (`make_scan_train` does).

  Example:
    >>> schedule = table_schedule(jnp.array([0.1, 0.2, 0.3]))
    >>> [round(float(schedule(t)), 2) for t in (0, 2, 7)]
    [0.1, 0.3, 0.3]
  """
  rates_T = jnp.asarray(rates_T)
  last = rates_T.shape[0] - 1
  return lambda count: rates_T[jnp.minimum(count, last)]


def stacked_batches(dataset: Any, num_steps: int, start: int = 0) -> Batch:
  """Training batches ``start .. start + num_steps - 1`` of ``dataset``
  stacked on a leading axis (host arrays, in the order the loop reads them).

  Example:
    >>> from dynamics import data
    >>> from dynamics.config_schema import defaults
    >>> c = defaults()
    >>> c.data.name, c.data.batch_size = 'digits', 8
    >>> b = stacked_batches(data.get_dataset(c), 3)
    >>> b['inputs'].shape[:2], b['targets'].shape[:2]
    ((3, 8), (3, 8))
  """
  batches = [dataset.train_batch(i) for i in range(start, start + num_steps)]
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def checkpointed_scan(body: Callable[[Any, Any], Tuple[Any, Any]], carry: Any,
                      xs: Any, checkpoint_every: Optional[int] = None
                      ) -> Tuple[Any, Any]:
  """``lax.scan(body, carry, xs)``, optionally rematerialized for reverse mode.

  With ``checkpoint_every = S`` every step is rematerialized
  (``jax.checkpoint``) and the steps are grouped in checkpointed segments of
  ``S``, so the reverse pass keeps ``T / S`` segment carries plus ``S`` step
  carries alive (``S ~ sqrt(T)`` is the classic choice) instead of every
  intermediate; ``S >= T`` is one segment. The values are those of the plain
  scan. Returns ``(carry, ys)`` with ``ys`` stacked over the ``T`` steps.

  Example:
    >>> checkpointed_scan(lambda c, x: (c * x, c), jnp.float32(1.0),
    ...                   jnp.arange(1.0, 6.0), checkpoint_every=2)
    (Array(120., dtype=float32), Array([ 1.,  1.,  2.,  6., 24.], dtype=float32))
  """
  if checkpoint_every is None:
    return jax.lax.scan(body, carry, xs)
  body = jax.checkpoint(body)
  num = jax.tree.leaves(xs)[0].shape[0]
  seg = int(checkpoint_every)
  if seg < 1:
    raise ValueError(f'checkpoint_every must be >= 1, got {checkpoint_every}')
  if seg >= num:
    return jax.lax.scan(body, carry, xs)
  n_seg = num // seg
  head = jax.tree.map(
      lambda a: a[:n_seg * seg].reshape((n_seg, seg) + a.shape[1:]), xs)
  segment = jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x))
  carry, ys = jax.lax.scan(segment, carry, head)
  ys = jax.tree.map(lambda y: y.reshape((n_seg * seg,) + y.shape[2:]), ys)
  if n_seg * seg < num:
    carry, tail = jax.lax.scan(body, carry,
                               jax.tree.map(lambda a: a[n_seg * seg:], xs))
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
  return carry, ys


def scan_train(state: step_lib.TrainState, batches_T: Batch, *,
               model: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule, options: step_lib.StepOptions,
               metric_names: Optional[Sequence[str]] = None,
               checkpoint_every: Optional[int] = None
               ) -> Tuple[step_lib.TrainState, Metrics]:
  """``T`` updates of `dynamics.step.train_step`, update ``t`` on ``batches_T[t]``.

  Pure (jit it, differentiate it): the same state, batches and static parts
  give the same bits as ``T`` calls of the jitted ``train_step`` from Python
  (`dynamics.step.make_train_step`).

  Args:
    state: the state before the first update (not modified).
    batches_T: ``{'inputs', 'targets'}`` with a leading axis of ``T`` updates
      (the order the loop reads them in: ``dataset.train_batch(start + t)``).
    model, tx, schedule, options: the static parts of the step, as in
      ``train_step`` (`table_schedule` for a table of rates).
    metric_names: the metrics kept per update (e.g. ``('loss',)``; default:
      all of them; ``()``: none).
    checkpoint_every: rematerialize for reverse mode (see
      `checkpointed_scan`); None: a plain scan.

  Returns:
    ``(state after T updates, {name: (T,) values})``.

  Example:
    >>> from dynamics.models import MLP
    >>> model, tx = MLP(hidden_sizes=(3,), num_outputs=1), optax.sgd(0.1)
    >>> params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))['params']
    >>> state = step_lib.TrainState(step=jnp.int32(0), params=params,
    ...     opt_state=tx.init(params), model_state={}, rng=jax.random.PRNGKey(1))
    >>> batches = {'inputs': jnp.ones((5, 4, 2)), 'targets': jnp.zeros((5, 4, 1))}
    >>> final, m = scan_train(state, batches, model=model, tx=tx,
    ...     schedule=optax.constant_schedule(0.1),
    ...     options=step_lib.StepOptions(loss='mse'), metric_names=('loss',))
    >>> int(final.step), m['loss'].shape
    (5, (5,))
  """
  names = None if metric_names is None else tuple(metric_names)
  step = functools.partial(step_lib.train_step, model=model, tx=tx,
                           schedule=schedule, options=options)

  def body(st, batch):
    st, metrics = step(st, batch)
    return st, metrics if names is None else {k: metrics[k] for k in names}

  return checkpointed_scan(body, state, batches_T, checkpoint_every)


def make_scan_train(run: Any, metric_names: Optional[Sequence[str]] = ('loss',)
                    ) -> ScanTrainFn:
  """Jitted ``scan_train_fn(state, batches_T, rates_T) -> (state, metrics_T)``.

  `scan_train` with the run's model, step options and optimizer (as
  ``run.config`` builds it), the optimizer's learning rate at update ``t``
  being ``rates_T[t]`` (`table_schedule`). The rates are an argument: one
  compilation serves every table of the same length and every seed (the seed
  only changes the state and the batches). ``rates_T`` is a host array,
  checked finite and non-negative before anything runs; the input state is
  not donated (replay many tables from one state).

  Args:
    run: a `dynamics.runs.Run` (its ``model``, ``options`` and ``config``).
    metric_names: the metrics returned per update (see `scan_train`).
  """
  model, options = run.model, run.options
  optimizer_config = parametrization.optimizer_config(run.config)

  @jax.jit
  def replay(state, batches_T, rates_T):
    schedule = table_schedule(rates_T)
    tx = optim_lib.build_optimizer(optimizer_config, schedule)
    return scan_train(state, batches_T, model=model, tx=tx, schedule=schedule,
                      options=options, metric_names=metric_names)

  def checked(state, batches_T, rates_T):
    rates = np.asarray(rates_T)
    if rates.ndim != 1 or not (np.all(np.isfinite(rates)) and np.all(rates >= 0)):
      raise ValueError('learning rates must be a 1-D table of finite values '
                       f'>= 0; got shape {rates.shape}')
    return replay(state, batches_T, jnp.asarray(rates, jnp.float32))

  return checked
