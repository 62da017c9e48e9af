"""Slices through a run's checkpoints: what ``python -m analysis.landscape``
computes for ``--mode=slice1d`` and ``--mode=slice2d``.

The loss is the run's inference-mode loss (and accuracy) with the centre
checkpoint's model state, averaged over ``num_batches`` held-out batches
``eval_batch(0..)``; the directions are filter-normalized random ones, the
top Hessian eigenvectors at the centre (on the same batches), or the plane of
three checkpoints (`analysis.landscape.slices`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from analysis.landscape import interpolation, slices


def resolve_steps(run, other, steps: Sequence[Optional[int]]) -> list:
  """Each step checked against its run's checkpoints before anything else
  (the last one of a plane is ``other``'s when given)."""
  out = []
  for i, s in enumerate(steps):
    r = other if (other is not None and i == 2) else run
    out.append(r.resolve_step(s))
  return out


class _Metrics(interpolation.Metrics):
  """``(params, batch) -> metrics`` with a fixed model state; hashed by
  identity, since the state is baked into the compiled chunk."""

  def __init__(self, model, options, model_state):
    super().__init__(model, options)
    self.model_state = model_state

  __hash__ = object.__hash__

  def __eq__(self, other):
    return self is other

  def __call__(self, params, batch):
    return super().__call__((params, self.model_state), batch)


def checkpoint_slice(run, steps: Sequence[Optional[int]], grid: Sequence[float],
                     *, mode: str = 'slice2d', directions: str = 'random',
                     other=None, num_batches: int = 2, chunk_size: int = 16,
                     seed: int = 0, show_progress: bool = False
                     ) -> Dict[str, Any]:
  """A 1-D or 2-D slice through checkpoint ``steps[0]`` of ``run``.

  Args:
    run: an opened run. other: the run of the third point of a plane.
    steps: ``[centre]``, or three steps for ``directions='plane'``.
    grid: coordinates on each axis.
    mode: 'slice1d' or 'slice2d'.
    directions: 'random' (filter-normalized, `seed`), 'hessian' (top
      eigenvectors) or 'plane' (2-D only).
    num_batches, chunk_size, show_progress: see `grid.evaluate_points`.

  Returns:
    The `slices.slice_1d` / `slice_2d` report plus ``steps``,
    ``directions``, and for a plane the three ``points``' coordinates;
    for Hessian directions their ``eigenvalues``.

  Raises:
    RunNotFoundError: a step without a checkpoint (before anything compiles).
    ValueError: a bad grid, mode or directions (named).
  """
  if mode not in ('slice1d', 'slice2d'):
    raise ValueError(f"--mode={mode}: a slice is 'slice1d' or 'slice2d'")
  if directions == 'plane' and (mode != 'slice2d' or len(steps) != 3):
    raise ValueError('--directions=plane needs --mode=slice2d and three '
                     '--steps')
  grid = slices.check_grid(grid, 'grid')
  steps = resolve_steps(run, other, steps)
  restored = run.restore(steps[0], ('params', 'model_state'))
  params = restored['params']
  fn = _Metrics(run.model, run.options, restored['model_state'])
  batches = [run.dataset.eval_batch(i) for i in range(num_batches)]
  report: Dict[str, Any] = {'workdir': run.workdir, 'steps': steps,
                            'directions': directions,
                            'num_batches': num_batches}
  k = 1 if mode == 'slice1d' else 2
  if directions == 'random':
    keys = jax.random.split(jax.random.PRNGKey(seed), k)
    dirs = [slices.random_direction(key, params) for key in keys]
  elif directions == 'hessian':
    loss = lambda p, b: fn(p, b)['loss']
    vals, dirs = slices.hessian_directions(loss, params, batches, k)
    report['eigenvalues'] = [float(v) for v in vals]
  else:
    third = (other or run).params(steps[2])
    interpolation.check_same_shapes(params, third)
    params, d1, d2 = slices.plane_of_three(params, run.params(steps[1]),
                                           third)
    dirs = [d1, d2]
    report['points'] = {f'step {steps[0]}': [0.0, 0.0],
                        f'step {steps[1]}': [1.0, 0.0],
                        f'{"other " if other else ""}step {steps[2]}':
                            [0.0, 1.0]}
  if mode == 'slice1d':
    out = slices.slice_1d(fn, params, dirs[0], grid, batches,
                          chunk_size=chunk_size, show_progress=show_progress)
  else:
    out = slices.slice_2d(fn, params, dirs[0], dirs[1], grid, grid, batches,
                          chunk_size=chunk_size, show_progress=show_progress)
  report.update(out)
  report['min_loss'] = float(np.min(out['loss']))
  return report
