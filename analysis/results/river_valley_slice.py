"""The WSD landscape slices read from their numbers: README row, claims,
figure (`experiments.reproductions.river_valley_slice` records them in
``results/river_valley_slice.json``)."""

import os
from typing import Any, Dict, List

import numpy as np

from analysis import plots
from analysis import stats

FIGURES = ('river_valley_slice.png',)
# "No barrier": the barrier on the line constant -> decayed is below this
# fraction of the loss the decay gains.
NO_BARRIER = 0.1
# The decay must gain at least this much eval loss (nats) to be read at all.
MIN_GAIN = 0.005


def _ms(s: Dict[str, Any]) -> str:
  return f"{s['mean']:.4f} ± {s['std']:.4f}"


def _verdict(comparison: Dict[str, Any], lower: str, higher: str) -> str:
  """`analysis.stats.verdict` with the p-value as recorded (not as a bound)."""
  text = stats.verdict(comparison, lower, higher)
  p = comparison['p']
  return text if p is None else text.replace('p < 0.0001', f'p = {p:.2g}')


def conclusion(numbers: Dict[str, Any]) -> str:
  l, b = numbers['loss'], numbers['barrier']
  return (f"eval loss constant {_ms(l['constant'])}, decayed "
          f"{_ms(l['decayed'])} ("
          + _verdict(numbers['decayed_vs_constant'], 'lower', 'higher')
          + f"), WSM merge {_ms(l['wsm'])} ("
          + _verdict(numbers['wsm_vs_constant'], 'lower', 'higher')
          + f"); barrier constant -> decayed {_ms(b['constant->decayed'])}, "
          f"constant -> WSM {_ms(b['constant->wsm'])}, decayed -> WSM "
          f"{_ms(b['decayed->wsm'])}; past the decayed "
          f"point (alpha = {numbers['alphas'][-1]:.1f}) the loss rises by "
          f"{_ms(numbers['rise_past_decayed'])}")


def readme_row(numbers: Dict[str, Any]) -> str:
  n = numbers['loss']['constant']['n']
  return ('| ![river-valley slice](docs/figures/river_valley_slice.png) | '
          'Slices through a constant-rate checkpoint of the `configs/wsd.py` '
          f"transformer (step {numbers['num_steps']}), its WSD branch "
          f"(linear decay over the last {numbers['decay_steps']} steps) and "
          'its WSM merge (same window), mean ± std over '
          f'{n} seeds (`python -m experiments.reproduce river_valley_slice`): '
          f'{conclusion(numbers)}. |')


def _lower(c: Dict[str, Any], a, b) -> bool:
  if c['verdict'] != 'no verdict':
    return c['verdict'] == 'a lower'
  return all(x < y for x, y in zip(a, b))


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """The river-valley reading: the decayed branch (and the WSM merge) is
  lower than the constant-rate checkpoint, the line between them has no
  barrier (below `NO_BARRIER` of the gain, a gain above `MIN_GAIN`), and the loss rises past the
  decayed point (a floor, not a slope)."""
  l = numbers['loss']
  gain = l['constant']['mean'] - l['decayed']['mean']
  return {
      'decay_lowers_the_loss': _lower(numbers['decayed_vs_constant'],
                                      l['decayed']['values'],
                                      l['constant']['values']),
      'wsm_lowers_the_loss': _lower(numbers['wsm_vs_constant'],
                                    l['wsm']['values'],
                                    l['constant']['values']),
      'no_barrier_down_to_the_decayed_point':
          gain > MIN_GAIN and numbers['barrier']['constant->decayed']['mean']
          < NO_BARRIER * gain,
      'loss_rises_past_the_decayed_point':
          min(numbers['rise_past_decayed']['values']) > 0}


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """The 1-D lines (first seed) and the 2-D slice of the first seed with
  the three points marked."""
  fig, axes = plots.figure(2, width=4.8, height=3.8)
  r = numbers['runs'][0]
  for name, line in r['lines'].items():
    axes[0].plot(numbers['alphas'], line['loss'], 'o-', ms=3, label=name)
  axes[0].axvline(0, color='0.7', lw=0.5)
  axes[0].axvline(1, color='0.7', lw=0.5)
  axes[0].set_xlabel(r'$\alpha$ on $(1-\alpha)\,\theta_a + \alpha\,\theta_b$')
  axes[0].set_ylabel('eval loss')
  axes[0].legend(fontsize=7)
  p = r['plane']
  if p is None:  # The points coincide: no plane.
    return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
  z = np.asarray(p['loss'])
  cs = axes[1].contourf(p['xs'], p['ys'], z, levels=20, cmap='viridis')
  fig.colorbar(cs, ax=axes[1], label='eval loss')
  for (x, y), name in zip(p['coords'], ('constant', 'decayed', 'WSM')):
    axes[1].plot(x, y, 'w^' if name == 'constant' else 'wo')
    axes[1].annotate(name, (x, y), color='w', fontsize=8,
                     xytext=(4, 4), textcoords='offset points')
  axes[1].set_xlabel('parameter distance (orthonormal plane)')
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
