r"""A training run as a pure function :math:`\theta_0 \mapsto \theta_T`.

`make_train_fn` replays `dynamics.step.train_step` over a run's fixed batches
in a checkpointed ``lax.scan`` (`dynamics.replay.scan_train`);
`check_deterministic` refuses a ``train_fn`` whose randomness is not fixed,
since forward- and reverse-mode products of it would then disagree.
"""

import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dynamics import replay, runs
from dynamics import step as step_lib
from dynamics.types import PyTree

TrainFn = Callable[[PyTree], PyTree]
_STATEFUL_RNG = ('rng_uniform', 'rng_bit_generator')


class RandomnessNotFixedError(ValueError):
  """The training run is not a deterministic function of its initialization."""


def unroll(step_fn: Callable[[Any, Any], Any], state: Any, batches: Any,
           checkpoint_every: Optional[int] = None) -> Any:
  """``state`` after ``step_fn(state, batches[t])`` for every ``t``, in a scan.

  Every step is rematerialized (``jax.checkpoint``); with ``checkpoint_every
  = S`` the steps are also grouped in checkpointed segments of ``S`` (see
  `dynamics.replay.checkpointed_scan`).

  Example:
    >>> unroll(lambda s, b: s * b, jnp.float32(1.0), jnp.arange(1.0, 6.0),
    ...        checkpoint_every=2)     # 5! in segments of 2 steps
    Array(120., dtype=float32)
  """
  num = jax.tree.leaves(batches)[0].shape[0]
  return replay.checkpointed_scan(lambda s, b: (step_fn(s, b), None), state,
                                  batches, checkpoint_every or num)[0]


def train_fn_and_state(run: runs.Run, num_steps: Optional[int] = None, *,
                       checkpoint_every: Optional[int] = None
                       ) -> Tuple[TrainFn, step_lib.TrainState]:
  """`make_train_fn`, returning the whole initial state (its model state and
  rng too) instead of its parameters."""
  config = run.config
  if config.seed is None:
    raise RandomnessNotFixedError(
        'refusing the training Jacobian: config.seed is None: the '
        'initialization, data order and dropout masks would change from run '
        'to run; set an integer seed.')
  num_steps = int(config.num_steps if num_steps is None else num_steps)
  state0 = run.init_state()
  first, again = run.dataset.train_batch(0), run.dataset.train_batch(0)
  if any(not np.array_equal(first[k], again[k]) for k in first):
    raise RandomnessNotFixedError(
        f'refusing the training Jacobian: data.name={config.data.name!r} '
        'returns different batches for the same index; the data order must be '
        'fixed.')
  batches = jax.tree.map(jnp.asarray,
                         replay.stacked_batches(run.dataset, num_steps))
  p = run.parts
  if checkpoint_every is None:
    checkpoint_every = max(1, int(round(math.sqrt(num_steps))))

  def train_fn(params):
    state = state0.replace(params=params, opt_state=p.tx.init(params))
    final, _ = replay.scan_train(
        state, batches, model=p.model, tx=p.tx, schedule=p.schedule,
        options=p.options, metric_names=(), checkpoint_every=checkpoint_every)
    return final.params

  return train_fn, state0


def make_train_fn(run: runs.Run, num_steps: Optional[int] = None, *,
                  checkpoint_every: Optional[int] = None
                  ) -> Tuple[TrainFn, PyTree]:
  """``(train_fn, params_0)``: the run as a pure function of its initialization.

  ``train_fn(params) -> params_T`` replays ``num_steps`` (default
  ``config.num_steps``) calls of `dynamics.step.train_step` on the run's
  fixed batches ``dataset.train_batch(0..T-1)`` with the run's rng (dropout
  masks are ``fold_in(rng, step)``: fixed), starting from ``params`` with a
  fresh optimizer state (`dynamics.replay.scan_train`, checkpointed).
  ``params_0`` is the run's initialization.

  Args:
    run: a `dynamics.runs.Run`: ``Run(config)`` for a config not trained
      yet, ``Run.open(workdir)`` for a recorded run (its config is replayed
      from step 0).
    num_steps: steps to unroll (default ``config.num_steps``).
    checkpoint_every: segment length of the checkpointed unroll (default
      ``sqrt(T)``; see `dynamics.replay.checkpointed_scan`).

  Raises:
    RandomnessNotFixedError: ``config.seed`` is None, or the data order is
      not fixed.
  """
  train_fn, state0 = train_fn_and_state(run, num_steps,
                                        checkpoint_every=checkpoint_every)
  return train_fn, state0.params


def _key_data(c):
  if hasattr(c, 'dtype') and jax.dtypes.issubdtype(c.dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(c))
  return np.asarray(c)


def _primitives(jaxpr) -> set:
  """Names of every primitive in ``jaxpr`` and its sub-jaxprs (scan, cond...)."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, 'jaxpr', item)   # ClosedJaxpr -> Jaxpr.
        if hasattr(inner, 'eqns'):
          names |= _primitives(inner)
  return names


def check_deterministic(train_fn: TrainFn, params_0: PyTree) -> None:
  """Refuses a ``train_fn`` whose randomness is not fixed.

  Traces ``train_fn`` twice: any difference between the two programs (their
  constants included) means randomness drawn at trace time (``np.random``
  without a seed, a key made from the clock), and forward- and reverse-mode
  products would then differ from each other. Stateful RNG primitives
  (``rng_uniform``, ``rng_bit_generator``) are refused as well.

  Raises:
    RandomnessNotFixedError: with the reason and how to fix it.

  Example:
    >>> check_deterministic(lambda p: 0.9 * p, jnp.ones(2))      # passes
    >>> noisy = lambda p: p + np.random.normal(size=2)
    >>> check_deterministic(noisy, jnp.ones(2))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    RandomnessNotFixedError: refusing the training Jacobian: ...
  """
  # Fresh wrappers: make_jaxpr caches traces by function identity.
  first = jax.make_jaxpr(lambda p: train_fn(p))(params_0)  # pylint: disable=unnecessary-lambda
  second = jax.make_jaxpr(lambda p: train_fn(p))(params_0)  # pylint: disable=unnecessary-lambda
  same = (str(first.jaxpr) == str(second.jaxpr)
          and len(first.consts) == len(second.consts)
          and all(np.array_equal(_key_data(a), _key_data(b))
                  for a, b in zip(first.consts, second.consts)))
  if not same:
    raise RandomnessNotFixedError(
        'refusing the training Jacobian: train_fn is not a deterministic '
        'function of params_0 (two traces of it differ). Randomness drawn while '
        'tracing, e.g. a dropout mask from np.random or a key made from the '
        'clock, would differ between J v and J^T u. Fix every random draw: '
        'derive keys from a fixed jax.random.key(seed) (fold_in the step) and '
        'pass the batches in a fixed order.')
  stateful = _primitives(first.jaxpr) & set(_STATEFUL_RNG)
  if stateful:
    raise RandomnessNotFixedError(
        f'refusing the training Jacobian: train_fn uses the stateful RNG '
        f'primitive(s) {sorted(stateful)}, whose draws are not a function of '
        'params_0; use jax.random with a fixed key instead.')


def flat_train_fn(train_fn: TrainFn, params_0: PyTree):
  """``(flat_fn, flat0, unravel)``: ``train_fn`` on ``ravel_pytree`` vectors."""
  flat0, unravel = ravel_pytree(params_0)
  flat_fn = lambda x: ravel_pytree(train_fn(unravel(x)))[0]
  return flat_fn, flat0, unravel
