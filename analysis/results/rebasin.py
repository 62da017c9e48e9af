"""The Git Re-Basin reproduction read from its numbers: README row, claims,
figure (`experiments.reproductions.rebasin` records them in
``results/rebasin.json``)."""

import os
from typing import Any, Dict, List

from analysis import plots
from analysis import stats

FIGURES = ('rebasin.png',)


def _ms(s: Dict[str, Any]) -> str:
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _verdict(comparison: Dict[str, Any], lower: str, higher: str) -> str:
  """`analysis.stats.verdict`, with the p-value printed as recorded (not
  as a bound), so every printed number is one of the JSON's."""
  text = stats.verdict(comparison, lower, higher)
  p = comparison['p']
  return text if p is None else text.replace(
      'p < 0.0001', f'p = {p:.2g}')


def conclusion(numbers: Dict[str, Any]) -> str:
  parts = []
  for w in numbers['widths']:
    p = numbers['per_width'][str(w)]
    v = _verdict(p['matched_vs_naive'], 'matched lower', 'matched higher')
    parts.append(f"width {w}: {_ms(p['naive'])} -> {_ms(p['matched'])} "
                 f"({v})")
  trend = _verdict(numbers['wide_vs_narrow_matched'],
                        'lower at the widest', 'higher at the widest')
  return '; '.join(parts) + f'; matched barrier vs width: {trend}'


def readme_row(numbers: Dict[str, Any]) -> str:
  n = numbers['per_width'][str(numbers['widths'][0])]['naive']['n']
  return ('| ![Git Re-Basin](docs/figures/rebasin.png) | Train-loss barrier '
          'between two digits MLPs trained from different seeds, before -> '
          'after weight matching (Ainsworth et al. 2023), mean ± std over '
          f"{n} seed pairs, {numbers['num_steps']} steps each "
          '(`python -m experiments.reproduce rebasin`): '
          f'{conclusion(numbers)}. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """Matching lowers the barrier at every width (every seed pair at smoke
  size, where there is no verdict; the paired test at full size), and the
  matched barrier is lower at the widest width than at the narrowest."""
  pw = numbers['per_width']
  lower = all(
      (p['matched_vs_naive']['verdict'] == 'a lower')
      if p['matched_vs_naive']['verdict'] != 'no verdict'
      else all(m < n for m, n in zip(p['matched']['values'],
                                     p['naive']['values']))
      for p in pw.values())
  ws = [str(w) for w in numbers['widths']]
  return {'matching_lowers_the_barrier': lower,
          'matched_barrier_falls_with_width':
              pw[ws[-1]]['matched']['mean'] < pw[ws[0]]['matched']['mean']}


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Barrier vs width (before/after), and the loss along the line of the
  first seed pair at each width."""
  fig, axes = plots.figure(2, width=4.8, height=3.6)
  widths = numbers['widths']
  for name, style in (('naive', 'o-'), ('matched', 's-')):
    s = [numbers['per_width'][str(w)][name] for w in widths]
    axes[0].errorbar(widths, [x['mean'] for x in s], yerr=[x['std'] for x in s],
                     fmt=style, capsize=3, label=name)
  axes[0].set_xscale('log', base=2)
  axes[0].set_xlabel('hidden width')
  axes[0].set_ylabel('train-loss barrier')
  axes[0].legend(fontsize=7)
  for i, w in enumerate(widths):
    r = numbers['per_width'][str(w)]['runs'][0]
    for name, ls in (('naive', '-'), ('matched', '--')):
      axes[1].plot(numbers['alphas'], r[name]['train_loss'], ls,
                   color=f'C{i}', label=f'width {w} {name}')
  axes[1].set_xlabel(r'$\alpha$')
  axes[1].set_ylabel('train loss')
  axes[1].legend(fontsize=6)
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
