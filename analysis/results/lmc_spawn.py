"""Frankle et al.'s instability analysis read from its numbers: README row,
claims, figure (`experiments.reproductions.lmc_spawn` records them in
``results/lmc_spawn.json``)."""

import os
from typing import Any, Dict, List

from analysis import plots
from analysis import stats

FIGURES = ('lmc_spawn.png',)
# "Near zero": the barrier at the last spawn step is below this fraction of
# the barrier at initialization.
NEAR_ZERO = 0.1


def _ms(s: Dict[str, Any]) -> str:
  return f"{s['mean']:.4f} ± {s['std']:.4f}"


def _verdict(comparison: Dict[str, Any], lower: str, higher: str) -> str:
  """`analysis.stats.verdict` with the p-value as recorded (not as a bound),
  so every printed number is one of the JSON's."""
  text = stats.verdict(comparison, lower, higher)
  p = comparison['p']
  return text if p is None else text.replace('p < 0.0001', f'p = {p:.2g}')


def conclusion(numbers: Dict[str, Any]) -> str:
  parts = [f"k={k}: {_ms(numbers['per_k'][str(k)]['train_barrier'])}"
           for k in numbers['spawn_steps']]
  v = _verdict(numbers['last_vs_init'], 'lower at the last k',
               'higher at the last k')
  return '; '.join(parts) + f'; last k vs k=0: {v}'


def readme_row(numbers: Dict[str, Any]) -> str:
  n = numbers['per_k'][str(numbers['spawn_steps'][0])]['train_barrier']['n']
  return ('| ![Instability analysis](docs/figures/lmc_spawn.png) | Train-loss '
          'barrier between two copies of a digits CNN spawned from the '
          'parent at step k and trained on with different data orders '
          '(Frankle et al. 2020), mean ± std over '
          f"{n} parents, {numbers['num_steps']} steps each "
          '(`python -m experiments.reproduce lmc_spawn`): '
          f'{conclusion(numbers)}. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """The barrier at the last spawn step is lower than at initialization
  (every parent where there is no verdict; the paired test otherwise), and
  near zero: below `NEAR_ZERO` times the barrier at initialization."""
  ks = numbers['spawn_steps']
  init = numbers['per_k'][str(ks[0])]['train_barrier']
  last = numbers['per_k'][str(ks[-1])]['train_barrier']
  c = numbers['last_vs_init']
  lower = (c['verdict'] == 'a lower' if c['verdict'] != 'no verdict' else
           all(l < i for l, i in zip(last['values'], init['values'])))
  return {'barrier_falls_after_early_training': lower,
          'barrier_near_zero_after_early_training':
              init['mean'] > 0 and last['mean'] < NEAR_ZERO * init['mean']}


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Barrier vs spawn step (train loss, held-out error), and the train loss
  along the line between the children of the first parent at each k."""
  fig, axes = plots.figure(2, width=4.8, height=3.6)
  ks = numbers['spawn_steps']
  x = [max(k, 0.5) for k in ks]  # k = 0 on a log axis.
  for name, style in (('train_barrier', 'o-'), ('eval_error_barrier', 's--')):
    s = [numbers['per_k'][str(k)][name] for k in ks]
    axes[0].errorbar(x, [v['mean'] for v in s], yerr=[v['std'] for v in s],
                     fmt=style, capsize=3, label=name.replace('_', ' '))
  axes[0].set_xscale('log')
  axes[0].set_xlabel('spawn step k (0 drawn at 0.5)')
  axes[0].set_ylabel('barrier')
  axes[0].legend(fontsize=7)
  r = numbers['runs'][0]
  for i, k in enumerate(ks):
    axes[1].plot(numbers['alphas'], r['per_k'][str(k)]['train_loss'],
                 color=f'C{i}', label=f'k={k}')
  axes[1].set_xlabel(r'$\alpha$')
  axes[1].set_ylabel('train loss')
  axes[1].legend(fontsize=7)
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
