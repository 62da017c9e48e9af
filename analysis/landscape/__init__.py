r"""Loss landscapes and mode connectivity between a run's checkpoints.

Library code only (no flags, no plots; the command is ``python -m
analysis.landscape``, the figures `analysis.plots.landscape_curve` and
`analysis.plots.landscape_surface`)::

  r = interpolate(Run.open('runs/a'), 2000, Run.open('runs/b'), 2000,
                  alphas=np.linspace(-0.25, 1.25, 13))
  r['eval']['barrier']                      # Frankle et al.'s barrier
  r = interpolate_params(loss_fn, params_a, params_b, alphas, batches)
  d1 = random_direction(key, params)        # filter-normalized (Li et al.)
  s = slice_2d(loss_fn, params, d1, d2, xs, ys, batches)
  params_b2 = align(params_a, params_b)     # weight matching (Git Re-Basin)
  soup = uniform_soup([p1, p2, p3]); fisher_merge(params, fishers)

Modules: `grid` (points evaluated in vmapped chunks with a progress bar),
`interpolation` (`interpolate`, `interpolate_params`, `barrier`,
`recompute_batch_stats`), `slices` (`slice_1d`, `slice_2d`, the directions),
`matching` (`weight_matching`, `align`, `permute`, `spec_for`), `soups`
(`uniform_soup`, `greedy_soup`, `fisher_merge`, `diagonal_fisher`).

Public names are loaded on first use, so ``python -m analysis.landscape
--help`` answers before JAX starts.
"""

import importlib
from typing import Any

_LAZY = {
    'evaluate_points': 'grid', 'stack_batches': 'grid',
    'interpolate': 'interpolation', 'interpolate_params': 'interpolation',
    'barrier': 'interpolation', 'lerp': 'interpolation',
    'recompute_batch_stats': 'interpolation', 'check_alphas': 'interpolation',
    'Metrics': 'interpolation',
    'slice_1d': 'slices', 'slice_2d': 'slices', 'filter_normalize': 'slices',
    'random_direction': 'slices', 'hessian_directions': 'slices',
    'plane_of_three': 'slices', 'orthonormal_plane': 'slices',
    'align': 'matching', 'weight_matching': 'matching',
    'permute': 'matching', 'perm_sizes': 'matching',
    'spec_for': 'matching',
    'uniform_soup': 'soups', 'greedy_soup': 'soups', 'fisher_merge': 'soups',
    'diagonal_fisher': 'soups', 'checkpoint_slice': 'checkpoints',
}
_SUBMODULES = ('args', 'checkpoints', 'grid', 'matching', 'interpolation', 'slices', 'soups')


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))


__all__ = sorted(_LAZY)
