"""The lazy-vs-rich reproduction read from its numbers: claims, README rows
and figures (`experiments.reproductions.lazy_vs_rich` records them in
``results/lazy_vs_rich.json``)."""

import os
from typing import Any, Dict, List, Sequence

import numpy as np

from analysis import plots


FIGURES = ('lazy_vs_rich_alpha.png', 'lazy_vs_rich_width.png')
PARAMETRIZATIONS = ('standard', 'ntk')
LABELS = {'standard': 'standard', 'ntk': 'NTK'}
FACTOR = 10.0  # "Falls at least 10x": kernel distance, smallest to largest.


def _width_sweeps(numbers: Dict[str, Any]) -> List[Any]:
  """``[(parametrization, sweep)]`` in `PARAMETRIZATIONS` order (the JSON's
  keys are sorted)."""
  return [(p, numbers['width'][p]) for p in PARAMETRIZATIONS
          if p in numbers['width']]


def _means(stats: Sequence[Dict[str, float]]) -> List[float]:
  return [s['mean'] for s in stats]


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """``{claim: holds}``, each read from the numbers (none typed)."""
  a = numbers['alpha']
  dist, change = _means(a['kernel_distance']), _means(a['param_change'])
  rich, lazy = a['alignment_gain'][0], a['alignment_gain'][-1]
  out = {
      f'kernel distance from init falls at least {FACTOR:g}x from the smallest '
      'to the largest alpha': dist[0] >= FACTOR * dist[-1],
      'relative parameter change falls at every step up in alpha':
          all(x > y for x, y in zip(change, change[1:])),
      # Beyond two standard errors at the smallest alpha, and 10x the largest's.
      'the kernel-label alignment rises in the rich regime (smallest alpha) '
      f'and {FACTOR:g}x less in the lazy one (largest alpha)':
          rich['mean'] > 2 * rich['std'] / np.sqrt(rich['n'])
          and rich['mean'] > FACTOR * abs(lazy['mean']),
  }
  for p, w in _width_sweeps(numbers):
    d = _means(w['kernel_distance'])
    out[f'{p} parametrization: kernel distance falls at least {FACTOR:g}x '
        'from the smallest to the largest width'] = d[0] >= FACTOR * d[-1]
  return out


def readme_row(numbers: Dict[str, Any]) -> str:
  """The README's table rows, one per figure, every number from ``numbers``."""
  a, n = numbers['alpha'], numbers['num_seeds']
  sci = lambda s: f"{s['mean']:.1e}"
  gain = lambda s: f"{s['mean']:+.1e} ± {s['std']:.1e}"
  peak = int(np.argmax(_means(a['alignment_gain'])))
  rows = [
      '| ![lazy vs rich](docs/figures/lazy_vs_rich_alpha.png) | Output scale '
      f"alpha from {a['alphas'][0]:g} to {a['alphas'][-1]:g} "
      '(`python -m experiments.reproduce lazy_vs_rich`, `configs/lazy_rich.py`: '
      f"centered width-{a['width']} ReLU MLP, SGD at rate / alpha², {n} seeds): "
      f"kernel distance from init falls from {sci(a['kernel_distance'][0])} to "
      f"{sci(a['kernel_distance'][-1])} and relative parameter change from "
      f"{a['param_change'][0]['mean']:.2f} to {sci(a['param_change'][-1])}; "
      f"label alignment changes by {gain(a['alignment_gain'][0])} at the "
      f"smallest alpha, {gain(a['alignment_gain'][-1])} at the largest (most: "
      f"{gain(a['alignment_gain'][peak])} at alpha {a['alphas'][peak]:g}). |"]
  if numbers['width']:
    parts = []
    for p, w in _width_sweeps(numbers):
      parts.append(f"to {sci(w['kernel_distance'][-1])} under the {LABELS[p]} "
                   f"parametrization (from {sci(w['kernel_distance'][0])})")
    w0 = _width_sweeps(numbers)[0][1]
    rows.append(
        '| ![width](docs/figures/lazy_vs_rich_width.png) | Width '
        f"{w0['widths'][0]} to {w0['widths'][-1]} at alpha = {w0['alpha']:g}: "
        f"kernel distance from init falls {' and '.join(parts)}; the standard "
        'parametrization with a rate ~ 1/width, the NTK one with one rate. |')
  return '\n'.join(rows)


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Draws `FIGURES` into ``figures_dir`` from the numbers alone; their paths."""
  os.makedirs(figures_dir, exist_ok=True)
  a, paths = numbers['alpha'], []
  fig, axes = plots.figure(2, width=5.0, height=3.8)
  for key, marker, label in (('kernel_distance', 'o-', 'kernel distance from init'),
                             ('param_change', 's--', 'relative parameter change')):
    axes[0].errorbar(a['alphas'], _means(a[key]), [s['std'] for s in a[key]],
                     fmt=marker, capsize=3, label=label)
  axes[0].set(xscale='log', yscale='log', xlabel='alpha (output scale)',
              title='movement from init')
  axes[0].legend()
  gain = a['alignment_gain']  # Per seed, final - init: the seeds' inits differ.
  axes[1].errorbar(a['alphas'], _means(gain), [s['std'] for s in gain], fmt='o-',
                   capsize=3)
  axes[1].axhline(0.0, color='gray', lw=0.5)
  axes[1].set(xscale='log', xlabel='alpha', ylabel='alignment after - at init',
              title=f"kernel-label alignment gain (mean ± std, "
              f"{numbers['num_seeds']} seeds)")
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[0])))
  if numbers['width']:
    fig, (ax,) = plots.figure(width=5.0, height=3.8)
    for (p, w), marker in zip(_width_sweeps(numbers), ('o-', 's--')):
      ax.errorbar(w['widths'], _means(w['kernel_distance']),
                  [s['std'] for s in w['kernel_distance']], fmt=marker,
                  capsize=3, label=f'{LABELS[p]} parametrization')
    ax.set(xscale='log', yscale='log', xlabel='width',
           ylabel='kernel distance from init', title=f"alpha = {w['alpha']:g}")
    ax.legend()
    paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[1])))
  return paths
