r"""Loss at many points of parameter space, evaluated in vmapped chunks.

A *grid* is a set of coordinates :math:`c \in \mathbb{R}^{N \times k}` and a
map from a coordinate to parameters, e.g. :math:`\theta(c) = \theta_0 +
c_1 d_1 + c_2 d_2`. `evaluate_points` computes the metrics of every point,
averaged over a fixed list of batches: ``chunk_size`` points at a time are
evaluated by one jitted, ``vmap``-ped call (the batches summed in a
``lax.scan``, so memory grows with the chunk, not with the number of
batches), the last chunk padded to the same size so one compilation serves
the whole grid, with a progress bar (`dynamics.progress`). Parameters
sharded over a mesh keep their sharding: the jitted call follows its inputs'
shardings, as training does.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import progress
from dynamics.types import Batch, PyTree

MetricFn = Callable[[PyTree, Batch], Dict[str, jax.Array]]
"""``(params, batch) -> {name: scalar}`` (e.g. ``{'loss', 'accuracy'}``)."""


def as_metric_fn(fn: Callable[[PyTree, Batch], object]) -> MetricFn:
  """``fn`` returning a scalar (a loss) or a dict, as a dict-valued fn."""

  def metric_fn(params, batch):
    out = fn(params, batch)
    return dict(out) if isinstance(out, dict) else {'loss': out}
  return metric_fn


def stack_batches(batches: Sequence[Batch]) -> PyTree:
  """A list of same-shaped batches as one tree with a leading batch axis.

  Raises:
    ValueError: no batches, or batches of different shapes (named).
  """
  batches = list(batches)
  if not batches:
    raise ValueError('batches: need at least one batch, got none')
  shapes = {str(jax.tree.map(np.shape, b)) for b in batches}
  if len(shapes) > 1:
    raise ValueError(f'batches: all must have one shape, got {sorted(shapes)}')
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                      *batches)


@functools.partial(jax.jit, static_argnames=('metric_fn', 'point_fn'))
def _chunk(metric_fn, point_fn, coords, stacked, context):
  """Mean metrics over the stacked batches of each point of ``coords``."""

  def one_point(c):
    params = point_fn(c, context)

    def accumulate(total, batch):
      m = metric_fn(params, batch)
      return jax.tree.map(lambda t, v: t + v.astype(jnp.float32), total,
                          m), None

    first = jax.tree.map(lambda x: x[0], stacked)
    zeros = jax.tree.map(lambda v: jnp.zeros((), jnp.float32),
                         jax.eval_shape(metric_fn, params, first))
    total, _ = jax.lax.scan(accumulate, zeros, stacked)
    num = jax.tree.leaves(stacked)[0].shape[0]
    return jax.tree.map(lambda t: t / num, total)

  return jax.vmap(one_point)(coords)


def evaluate_points(metric_fn: MetricFn,
                    point_fn: Callable[[jax.Array, PyTree], PyTree],
                    coords: np.ndarray, batches: Sequence[Batch], *,
                    context: PyTree = None, chunk_size: int = 16,
                    show_progress: bool = False,
                    desc: str = 'landscape points') -> Dict[str, np.ndarray]:
  r"""Metrics of the parameters ``point_fn(c, context)`` for each row ``c``.

  .. math::
    m(c) = \frac{1}{B} \sum_{b=1}^{B} \mathrm{metric}(\theta(c), x_b)

  Args:
    metric_fn: ``(params, batch) -> {name: scalar}`` (`as_metric_fn` wraps a
      loss). Must be hashable (a module-level function or a ``partial``):
      it is a static argument of the compiled chunk.
    point_fn: ``(coordinate (k,), context) -> params``, traceable; pass the
      arrays it needs (the centre, the directions) as ``context`` so they
      are arguments of the compiled call, not constants baked into it.
    coords: ``(N, k)`` coordinates.
    batches: same-shaped batches; each point's metrics are their mean.
    context: a pytree of arrays handed to ``point_fn``.
    chunk_size: points per vmapped call (memory: ``chunk_size`` parameter
      copies and activations).
    show_progress: draw a progress bar over the points.
    desc: the bar's name.

  Returns:
    ``{name: (N,) float64 array}``.

  Raises:
    ValueError: an empty grid, a non-positive chunk size, or no batches.

  Example:
    >>> loss = lambda p, b: {'loss': jnp.sum((p - b) ** 2)}
    >>> out = evaluate_points(loss, lambda c, ctx: ctx + c, np.eye(2),
    ...                       [jnp.zeros(2)], context=jnp.zeros(2))
    >>> out['loss'].tolist()
    [1.0, 1.0]
  """
  coords = np.asarray(coords, np.float32)
  if coords.ndim != 2 or coords.shape[0] == 0:
    raise ValueError(f'coords: need a non-empty (N, k) grid, got shape '
                     f'{coords.shape}')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}')
  stacked = stack_batches(batches)
  n = coords.shape[0]
  chunk_size = min(chunk_size, n)
  pieces = []
  with progress.bar(n, desc, enabled=show_progress, leave=False) as bar:
    for start in range(0, n, chunk_size):
      part = coords[start:start + chunk_size]
      pad = chunk_size - part.shape[0]  # One shape: one compilation.
      if pad:
        part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
      out = jax.device_get(_chunk(metric_fn, point_fn, jnp.asarray(part),
                                  stacked, context))
      pieces.append({k: np.asarray(v, np.float64)[:chunk_size - pad]
                     for k, v in out.items()})
      bar.update(chunk_size - pad)
  return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
