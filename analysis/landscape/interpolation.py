r"""Linear interpolation between two parameter vectors, and its barrier.

Along :math:`\theta(\alpha) = (1 - \alpha)\,\theta_a + \alpha\,\theta_b`
(``alpha`` may leave :math:`[0, 1]`), the loss barrier is (Frankle et al.
2020, Definition 1, as used by Ainsworth et al. 2023)

.. math::
  B(\theta_a, \theta_b) = \max_{\alpha \in [0, 1]} \Big[
      L(\theta(\alpha)) - \big((1 - \alpha) L(\theta_a) + \alpha L(\theta_b)\big)
  \Big],

the largest rise of the loss above the straight line between the endpoint
losses; two networks are *linearly mode connected* when it is about zero.
Only grid points in :math:`[0, 1]` enter the maximum, and both endpoints
must be on the grid.

A model with batch normalization has running statistics that belong to its
endpoints, not to the interpolated weights: `interpolate` recomputes them on
training batches at every :math:`\alpha` (`recompute_batch_stats`), as
Frankle et al. and Jordan et al. (REPAIR, 2023) do; without it the midpoint
loss is dominated by stale statistics.

References:
  Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis" (ICML 2020).
  Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
  Permutation Symmetries" (ICLR 2023).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis.landscape import grid
from dynamics import losses, progress
from dynamics.types import Batch, PyTree


def check_alphas(alphas: Sequence[float], name: str = 'alphas') -> np.ndarray:
  """``alphas`` as a float64 array, or a one-line ValueError naming ``name``."""
  a = np.asarray(alphas, np.float64).reshape(-1)
  if a.size == 0:
    raise ValueError(f'{name}: the interpolation grid is empty')
  if not np.all(np.isfinite(a)):
    raise ValueError(f'{name}: must be finite numbers, got {a.tolist()}')
  return a


def barrier(alphas: Sequence[float], losses_: Sequence[float]) -> float:
  r"""Frankle et al.'s loss barrier of an interpolation curve.

  .. math::
    \max_{\alpha \in [0, 1]} L(\alpha) - ((1 - \alpha) L(0) + \alpha L(1))

  Args:
    alphas: the grid (any order; points outside [0, 1] are ignored).
    losses_: the loss at each alpha.

  Returns:
    The barrier (>= 0, since the endpoints themselves score 0).

  Raises:
    ValueError: a grid without both 0 and 1, or mismatched lengths.

  Example:
    >>> barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
    1.5
  """
  a = check_alphas(alphas)
  l = np.asarray(losses_, np.float64).reshape(-1)
  if l.shape != a.shape:
    raise ValueError(f'barrier: {a.size} alphas but {l.size} losses')
  ends = [np.flatnonzero(np.isclose(a, e, atol=1e-9, rtol=0)) for e in (0, 1)]
  if not all(len(e) for e in ends):
    raise ValueError('alphas: the grid must contain both endpoints 0 and 1 '
                     f'to define a barrier, got {a.tolist()}')
  l0, l1 = l[ends[0][0]], l[ends[1][0]]
  inside = (a >= -1e-9) & (a <= 1 + 1e-9)
  rise = l[inside] - ((1 - a[inside]) * l0 + a[inside] * l1)
  return float(max(rise.max(), 0.0))


def lerp(params_a: PyTree, params_b: PyTree, alpha) -> PyTree:
  """``(1 - alpha) * a + alpha * b`` leaf by leaf (in each leaf's dtype)."""
  return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(a.dtype),
                      params_a, params_b)


def _lerp_point(c, context):
  a, b = context
  return lerp(a, b, c[0])


def check_same_shapes(params_a: PyTree, params_b: PyTree,
                      name: str = 'other_workdir') -> None:
  """A one-line ValueError naming ``name`` unless the trees match in shape."""
  sa = jax.tree.map(np.shape, params_a)
  sb = jax.tree.map(np.shape, params_b)
  if jax.tree.structure(params_a) != jax.tree.structure(params_b) or sa != sb:
    raise ValueError(f'{name}: the two models have different parameter '
                     'shapes or names; interpolation needs one architecture')


def interpolate_params(loss_fn, params_a: PyTree, params_b: PyTree,
                       alphas: Sequence[float], batches: Sequence[Batch], *,
                       chunk_size: int = 8, show_progress: bool = False
                       ) -> Dict[str, Any]:
  r"""Metrics along :math:`(1 - \alpha) \theta_a + \alpha \theta_b`.

  Args:
    loss_fn: ``(params, batch) -> scalar`` or ``-> {name: scalar}``
      (hashable; see `grid.evaluate_points`).
    params_a, params_b: the endpoints (same structure and shapes).
    alphas: the grid; may extend beyond [0, 1].
    batches: the metrics are means over these.
    chunk_size, show_progress: as in `grid.evaluate_points`.

  Returns:
    ``{'alphas': [...], name: [...] per metric, 'barrier': float or None}``
    -- the barrier of the ``'loss'`` curve when the grid holds 0 and 1.

  Example:
    >>> loss = lambda p, b: jnp.sum((p ** 2 - 1.0) ** 2)
    >>> r = interpolate_params(loss, -jnp.ones(1), jnp.ones(1),
    ...                        [0.0, 0.5, 1.0], [jnp.zeros(1)])
    >>> r['loss'], r['barrier']
    ([0.0, 1.0, 0.0], 1.0)
  """
  a = check_alphas(alphas)
  check_same_shapes(params_a, params_b, 'params_b')
  out = grid.evaluate_points(grid.as_metric_fn(loss_fn), _lerp_point, a[:, None], batches,
                             context=(params_a, params_b),
                             chunk_size=chunk_size,
                             show_progress=show_progress,
                             desc='interpolation')
  report = {'alphas': a.tolist(), **{k: v.tolist() for k, v in out.items()}}
  has_ends = all(np.any(np.isclose(a, e, atol=1e-9, rtol=0)) for e in (0, 1))
  report['barrier'] = barrier(a, out['loss']) if has_ends else None
  return report


def has_batch_stats(model_state: PyTree) -> bool:
  """Whether a model state holds batch-norm running statistics."""
  return bool(model_state) and 'batch_stats' in model_state and bool(
      jax.tree.leaves(model_state['batch_stats']))


def recompute_batch_stats(model, params: PyTree, model_state: PyTree,
                          batches: Sequence[Batch]) -> PyTree:
  r"""Batch-norm statistics of ``params``: the mean over ``batches`` of each
  layer's batch mean and (biased) batch variance.

  The model's own update :math:`r \leftarrow m r + (1 - m) s` is applied
  once from :math:`r = 0` and once from :math:`r = 1`, which gives the
  momentum :math:`m` and the batch statistic :math:`s` whatever the
  layer's momentum -- no knowledge of the layers needed.

  Args:
    model: the Flax module (``model.apply(..., train=True,
      mutable=['batch_stats'])``).
    params: the parameters whose statistics are wanted.
    model_state: a state of the right structure (its values are ignored).
    batches: training batches.

  Returns:
    ``model_state`` with its ``batch_stats`` replaced.
  """
  if not has_batch_stats(model_state):
    return model_state
  total = None
  for b in batches:
    s = _batch_stats(model, params, model_state, jnp.asarray(b['inputs']))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  n = len(batches)
  return {**model_state, 'batch_stats': jax.tree.map(lambda t: t / n, total)}


@functools.partial(jax.jit, static_argnames=('model',))
def _batch_stats(model, params, model_state, inputs):
  """One batch's statistics ``s`` from the updates of ``r = 0`` and ``r = 1``."""
  def updated(fill):
    start = jax.tree.map(lambda s: jnp.full_like(s, fill),
                         model_state['batch_stats'])
    _, new = model.apply({**model_state, 'params': params,
                          'batch_stats': start}, inputs, train=True,
                         mutable=['batch_stats'],
                         rngs={'dropout': jax.random.PRNGKey(0)})
    return new['batch_stats']
  u0, u1 = updated(0.0), updated(1.0)
  return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), u0, u1)


def interpolate(run_a, step_a: Optional[int], run_b, step_b: Optional[int],
                alphas: Sequence[float], *, num_batches: int = 4,
                chunk_size: int = 8, show_progress: bool = False,
                align: bool = False) -> Dict[str, Any]:
  """Train and eval loss (and accuracy) along the line between two runs'
  checkpoints, and the barrier of each.

  Batch-norm statistics are recomputed on ``num_batches`` training batches
  at every alpha (`recompute_batch_stats`); models without batch norm use
  run A's model state at every alpha (it holds no statistics of the weights).

  Args:
    run_a, run_b: opened runs (`dynamics.runs.Run.open`) of one architecture.
    step_a, step_b: checkpoint steps (None: the latest).
    alphas: the grid (0 and 1 included for a barrier).
    num_batches: training batches ``train_batch(0..)`` and held-out batches
      ``eval_batch(0..)`` per metric.
    chunk_size, show_progress: as in `grid.evaluate_points`.
    align: permute B's hidden units to match A's first
      (`analysis.landscape.matching.align`, weight matching); B's function
      is unchanged, only the line between them moves.

  Returns:
    ``{'alphas', 'train': {'loss', ['accuracy'], 'barrier'}, 'eval': {...},
    'step_a', 'step_b', 'steps', 'batch_norm': bool, 'aligned': bool}``.

  Raises:
    RunNotFoundError: a step without a checkpoint (before anything compiles).
    ValueError: an empty alpha grid, or runs of different shapes (named).
  """
  a = check_alphas(alphas)
  step_a, step_b = run_a.resolve_step(step_a), run_b.resolve_step(step_b)
  check_same_shapes(run_a.abstract_state.params, run_b.abstract_state.params)
  ra = run_a.restore(step_a, ('params', 'model_state'))
  params_b = run_b.params(step_b)
  if align:
    from analysis.landscape import matching  # pylint: disable=g-import-not-at-top
    params_b = matching.align(ra['params'], params_b)
  model, options = run_a.model, run_a.options
  train = [run_a.dataset.train_batch(i) for i in range(num_batches)]
  held_out = [run_a.dataset.eval_batch(i) for i in range(num_batches)]
  bn = has_batch_stats(ra['model_state'])
  report = {'alphas': a.tolist(), 'step_a': step_a, 'step_b': step_b,
            'workdir_a': run_a.workdir, 'workdir_b': run_b.workdir,
            'steps': [step_a, step_b], 'batch_norm': bn, 'aligned': align,
            'num_batches': num_batches}
  fn = Metrics(model, options)
  curves = {'train': [], 'eval': []}
  if not bn:  # One state for every alpha: whole chunks of alphas at once.
    context = (ra['params'], params_b, ra['model_state'])
    for split, batches in (('train', train), ('eval', held_out)):
      curves[split] = grid.evaluate_points(
          fn, _lerp_with_state, a[:, None], batches, context=context,
          chunk_size=chunk_size, show_progress=show_progress,
          desc=f'interpolation ({split})')
  else:  # Statistics per point: one alpha at a time.
    rows = {'train': [], 'eval': []}
    with progress.bar(len(a), 'interpolation (batch norm)',
                      enabled=show_progress, leave=False) as bar:
      for alpha in a:
        p = lerp(ra['params'], params_b, float(alpha))
        state = recompute_batch_stats(model, p, ra['model_state'], train)
        for split, batches in (('train', train), ('eval', held_out)):
          rows[split].append(grid.evaluate_points(
              fn, _fixed_point, np.zeros((1, 1)), batches,
              context=(p, state)))
        bar.update(1)
    curves = {k: {m: np.concatenate([r[m] for r in v]) for m in v[0]}
              for k, v in rows.items()}
  has_ends = all(np.any(np.isclose(a, e, atol=1e-9, rtol=0)) for e in (0, 1))
  for split, c in curves.items():
    report[split] = {k: v.tolist() for k, v in c.items()}
    report[split]['barrier'] = barrier(a, c['loss']) if has_ends else None
  return report


def _lerp_with_state(c, context):
  a, b, state = context
  return lerp(a, b, c[0]), state


def _fixed_point(c, context):
  del c
  return context


class Metrics:
  """``((params, model_state), batch) -> {'loss', ['accuracy']}`` in
  inference mode; equal instances hash equal, so a compiled chunk serves
  every call with the same model. For `interpolate_params` between
  stateless models pass the endpoints as ``(params, {})``."""

  def __init__(self, model, options):
    self.model, self.options = model, options

  def __hash__(self):
    return hash((self.model, self.options))

  def __eq__(self, other):
    return (isinstance(other, Metrics) and self.model == other.model
            and self.options == other.options)

  def __call__(self, point, batch):
    params, model_state = point
    _, (_, m) = losses.compute_loss(self.model, params, model_state, batch,
                                    None, self.options, train=False)
    return {k: v for k, v in m.items() if k in ('loss', 'accuracy')}
