"""The muP coordinate check read from its numbers: claims, README row and
figure (`experiments.reproductions.mup_coordinate_check` records them in
``results/mup_coordinate_check.json``)."""

import os
from typing import Any, Dict, List

import matplotlib
import numpy as np

from analysis import plots


FIGURES = ('mup_coordinate_check.png',)
PARAMETRIZATIONS = ('mup', 'standard')
LAYERS = ('dense_0', 'dense_1', 'head')
LAYER_NAMES = {'dense_0': 'input layer', 'dense_1': 'hidden layer',
               'head': 'readout'}
FLAT = 0.1          # muP: |slope| below this at every layer and step.
GROWING = 0.5       # Standard: the hidden layer's and readout's slopes above.
MUP_FROM_STEP = 2   # The zero readout sends no gradient down on step 1.


def worst(numbers: Dict[str, Any], parametrization: str, layer: str,
          from_step: int = 1) -> float:
  """The slope of largest magnitude (mup) or the smallest slope (standard)
  of a layer over the steps ``>= from_step``."""
  found = numbers['slopes'][parametrization][layer]
  s = [v for t, v in zip(numbers['steps'], found)
       if t >= from_step and v is not None]
  return max(s, key=abs) if parametrization == 'mup' else min(s)


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  out = {}
  for n in LAYERS:
    out[f'mup_{n}_flat'] = abs(worst(numbers, 'mup', n, MUP_FROM_STEP)) < FLAT
  for n in ('dense_1', 'head'):
    out[f'standard_{n}_grows'] = worst(numbers, 'standard', n) > GROWING
  return out


def readme_row(numbers: Dict[str, Any]) -> str:
  w, steps, setup = numbers['widths'], numbers['steps'], numbers['setup']
  mup = ', '.join(
      f"{LAYER_NAMES[n]} {worst(numbers, 'mup', n, MUP_FROM_STEP):+.3f}"
      for n in LAYERS)
  sp = ', '.join(f"{LAYER_NAMES[n]} {worst(numbers, 'standard', n):+.2f}"
                 for n in ('dense_1', 'head'))
  ok = all(claims(numbers).values())
  return ('| ![muP coordinate check](docs/figures/mup_coordinate_check.png) | '
          'muP coordinate check (`python -m experiments.reproduce '
          f"mup_coordinate_check`, `configs/mup.py`): a ReLU MLP of width "
          f"{w[0]} to {w[-1]}, {len(steps)} Adam steps at "
          f"{setup['learning_rate']:g}, {setup['num_seeds']} seeds; slope of "
          "log(change of each layer's output) vs log(width). muP (readout "
          f'initialized at zero), worst over steps: {mup} (flat: |slope| < '
          f'{FLAT}); standard parametrization, smallest over steps: {sp} '
          f"(grows). {'Reproduced' if ok else 'Not reproduced'}. |")


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Change of each layer's output vs width, one line per step: muP solid,
  the standard parametrization dashed (Yang et al.'s coordinate check)."""
  widths = numbers['widths']
  fig, axes = plots.figure(len(LAYERS), width=4.0, height=3.6)
  styles = {'mup': ('-', 'Blues'), 'standard': ('--', 'Reds')}
  steps = numbers['steps']
  for p in PARAMETRIZATIONS:
    sizes = np.asarray(numbers['sizes'][p])  # widths x steps x layers
    ls, cmap = styles[p]
    colors = matplotlib.colormaps[cmap](np.linspace(0.45, 0.95, len(steps)))
    for col, n in enumerate(LAYERS):
      for ti, t in enumerate(steps):
        y = sizes[:, ti, col]
        if np.all(y > 0):
          axes[col].plot(widths, y, 'o' + ls, color=colors[ti], ms=3,
                         label=f'{p}, t = {t}')
  for col, n in enumerate(LAYERS):
    axes[col].set_xscale('log', base=2)
    axes[col].set_yscale('log')
    axes[col].set_title(f'{LAYER_NAMES[n]} ({n})')
    axes[col].set_xlabel('width')
    axes[col].legend(fontsize=6, ncol=2)
  axes[0].set_ylabel('RMS change of the layer output')
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
