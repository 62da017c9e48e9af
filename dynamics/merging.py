"""WSM: decay-free schedules by merging constant-learning-rate checkpoints.

A run at constant learning rate :math:`\\eta` keeps checkpoints
:math:`\\theta_{t_1}, \\dots, \\theta_{t_K}` every ``interval`` steps over the
last ``window`` steps (:math:`t_K` the budget). Their weighted average

.. math::
  \\bar\\theta = \\sum_{k=1}^{K} c_k \\theta_{t_k}
             = \\theta_0 - \\eta \\sum_i \\Big(\\sum_{k:\\, t_k > i} c_k\\Big) g_i

is the model of a run whose update :math:`i` was scaled by
:math:`\\sum_{k: t_k > i} c_k` (exactly so when the gradients :math:`g_i` do not
depend on the weights, e.g. a linear loss; approximately otherwise). Choosing
:math:`c_k = \\alpha_{k-1} - \\alpha_k` with :math:`\\alpha_k = f(k / K)`, ``f``
a decay shape (:math:`\\alpha_0 = 1` before the window, :math:`\\alpha_K = 0`
after it), gives :math:`\\sum_{k > j} c_k = \\alpha_j`: the merge emulates the
decay ``f`` over the window, as a staircase with one stair per ``interval``.
With ``interval = 1`` and ``window = D`` it is exactly the ``D``-step decay of
:func:`dynamics.schedules.wsd` (update :math:`S + m` scaled by :math:`f(m/D)`).

Note that the linear emulation gives equal weights :math:`1/K`: uniform
averaging *is* a linear decay under this mapping; both names are accepted.

References:
  Tian et al., "WSM: Decay-Free Learning Rate Schedule via Checkpoint Merging
  for LLM Pre-training", 2025.
"""

from collections.abc import Iterable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dynamics import decay
from dynamics import errors
from dynamics.types import PyTree

MergeShape = str  # A name of MERGE_SHAPES.
MERGE_SHAPES = tuple(decay.MERGE_SHAPES)


def check(config) -> None:
  """Raises ``ConfigError`` for an invalid ``config.merge`` field."""
  mg = config.merge
  errors.integer('merge.interval', mg.interval, 1, optional=True)
  if mg.window is not None:
    errors.require(errors.is_int(mg.window)
                   and 0 < mg.window <= config.num_steps, 'merge.window',
                   mg.window,
                   f'must be an integer in (0, num_steps={config.num_steps}]')
  errors.one_of('merge.shape', mg.shape, MERGE_SHAPES)


def emulated_multipliers(shape: MergeShape, num_checkpoints: int) -> np.ndarray:
  """The multipliers :math:`\\alpha_0 = 1, \\alpha_1, \\dots, \\alpha_K = 0`.

  :math:`\\alpha_j` scales the updates between checkpoints ``j`` and ``j + 1``
  (checkpoint 0 being the start of the window); ``K + 1`` values.
  """
  if int(num_checkpoints) != num_checkpoints or num_checkpoints < 1:
    raise ValueError(
        f'num_checkpoints must be a positive integer, got {num_checkpoints!r}')
  progress = np.arange(num_checkpoints + 1) / num_checkpoints
  # Float64 NumPy, so the weights are exact (the schedule runs in float32).
  return decay.decay_multiplier(progress.astype(np.float64), shape, np,
                                decay.MERGE_SHAPES)


def merge_weights(shape: MergeShape, num_checkpoints: int) -> np.ndarray:
  r"""Merge weights that emulate a learning-rate decay of the given shape.

  .. math::
    c_k = \alpha_{k-1} - \alpha_k, \qquad \alpha_k = f(k / K),
    \qquad k = 1, \dots, K

  with ``f`` the decay multiplier (``1 - p``, ``(1 + cos(pi p)) / 2`` or
  ``1 - sqrt(p)``), so the weights are non-negative, sum to 1 and
  :math:`\sum_{k > j} c_k = \alpha_j`. ``'uniform'`` is plain averaging
  (:math:`c_k = 1 / K`), which equals the linear emulation.

  Args:
    shape: 'uniform', 'linear', 'cosine' or '1-sqrt'.
    num_checkpoints: ``K``, the checkpoints in the window, oldest first.

  Returns:
    float64 array of shape ``(K,)``; entry ``k - 1`` weighs checkpoint ``k``
    (the last entry is the newest checkpoint).

  Example:
    >>> merge_weights('linear', 4)
    array([0.25, 0.25, 0.25, 0.25])
    >>> merge_weights('1-sqrt', 4).round(3)
    array([0.5  , 0.207, 0.159, 0.134])

  References:
    Tian et al., "WSM: Decay-Free Learning Rate Schedule via Checkpoint Merging
    for LLM Pre-training", 2025.
  """
  if shape not in MERGE_SHAPES:
    raise ValueError(f'shape must be one of {MERGE_SHAPES}, got {shape!r}')
  if shape == 'uniform':
    emulated_multipliers(shape, num_checkpoints)  # Validates the count.
    return np.full(num_checkpoints, 1.0 / num_checkpoints)
  alpha = emulated_multipliers(shape, num_checkpoints)
  return alpha[:-1] - alpha[1:]


def check_weights(weights: Sequence[float], num_checkpoints: int,
                  atol: float = 1e-6) -> np.ndarray:
  """Weights as float64, or a ValueError naming what is wrong with them."""
  w = np.asarray(weights, np.float64)
  if w.shape != (num_checkpoints,):
    raise ValueError(f'got {w.size} weights for {num_checkpoints} checkpoints: '
                     f'{w.tolist()}')
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError(f'merge weights must be finite and non-negative, got '
                     f'{w.tolist()}')
  if abs(w.sum() - 1.0) > atol:
    raise ValueError(f'merge weights must sum to 1, got sum {w.sum()!r} for '
                     f'{w.tolist()}')
  return w


def window_steps(final_step: int, window: int, interval: int) -> list[int]:
  """Steps of the checkpoints merged for ``final_step``, oldest first.

  The ``window // interval`` steps ``final_step - window + interval, ...,
  final_step``: the window's start itself is not merged (it carries
  :math:`\\alpha_0 = 1`).

  Raises:
    ValueError: naming the value, if the window is not a positive multiple of
      the interval or is longer than the run.
  """
  if interval is None or interval < 1:
    raise ValueError(f'merge interval must be a positive integer, got {interval!r}')
  if window is None or window < interval or window % interval:
    raise ValueError(f'merge window must be a positive multiple of the interval '
                     f'{interval}, got window={window!r}')
  if window > final_step:
    raise ValueError(f'merge window={window} is longer than the run, which '
                     f'ends at step {final_step}')
  if final_step % interval:
    raise ValueError(f'final_step={final_step} is not a multiple of the merge '
                     f'interval {interval}, so no checkpoint was kept there')
  return list(range(final_step - window + interval, final_step + 1, interval))


def merge_params(params_stream: Iterable[PyTree],
                 weights: Sequence[float]) -> PyTree:
  r"""Streaming weighted average :math:`\sum_k c_k \theta_k` of parameter trees.

  Consumes ``params_stream`` one tree at a time and drops each tree before
  asking for the next, so at most one tree besides the accumulator is alive
  (when the iterator does not itself keep them). Accumulates in each leaf's own
  dtype (use float64 parameters for exact sums).

  Args:
    params_stream: iterable of parameter pytrees of identical structure; may be
      a generator that loads them lazily.
    weights: one weight per tree, non-negative and summing to 1.

  Returns:
    The merged parameter pytree.

  Example:
    >>> merge_params(iter([{'w': jnp.ones(2)}, {'w': jnp.zeros(2)}]),
    ...              [0.25, 0.75])['w'].tolist()
    [0.25, 0.25]
  """
  w = check_weights(weights, len(weights))
  accumulator, count = None, 0
  for params in params_stream:
    if count >= len(w):
      raise ValueError(f'more parameter trees than the {len(w)} weights')
    c = float(w[count])
    if accumulator is None:
      accumulator = jax.tree.map(lambda p: c * jnp.asarray(p), params)
    else:
      # Checkpoints of one run: same names and shapes, or a clear error.
      chex.assert_trees_all_equal_shapes(accumulator, params)
      accumulator = jax.tree.map(lambda a, p: a + c * jnp.asarray(p),
                                 accumulator, params)
    # Drop the loop's reference before the stream loads the next tree.
    del params
    count += 1
  if count != len(w):
    raise ValueError(f'got {count} parameter trees for {len(w)} weights')
  return accumulator


def merge_checkpoints(run, steps: Sequence[int],
                      weights: Sequence[float]) -> PyTree:
  """Weighted average of the parameters of a run's checkpoints.

  Streaming: only the parameters of one checkpoint at a time are read
  (``run.params(step)``, an orbax partial restore) and folded into the
  accumulator (see :func:`merge_params`).

  Args:
    run: a `dynamics.runs.Run` with the checkpoints (e.g. kept every
      ``config.merge.interval`` steps).
    steps: checkpoint steps, in the order of ``weights``.
    weights: one non-negative weight per step, summing to 1 (e.g. from
      :func:`merge_weights`).

  Returns:
    The merged parameter pytree.

  Raises:
    RunNotFoundError: a step without a checkpoint (the available ones listed).
    ValueError: invalid weights, naming the value.

  Example:
    >>> steps = window_steps(final_step=3000, window=600, interval=100)
    >>> params = merge_checkpoints(Run.open('runs/wsm'), steps,
    ...                            merge_weights('1-sqrt', len(steps)))  # doctest: +SKIP
  """
  steps = [int(s) for s in steps]
  check_weights(weights, len(steps))
  for s in steps:
    run.resolve_step(s)  # Each checked before any is read.
  return merge_params((run.params(s) for s in steps), weights)
