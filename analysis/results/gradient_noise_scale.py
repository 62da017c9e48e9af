"""The gradient-noise-scale reproduction read from its numbers: README row,
claims, figure (`experiments.reproductions.gradient_noise_scale` records
them in ``results/gradient_noise_scale.json``)."""

import os
from typing import Any, Dict, List

import numpy as np

from analysis import plots
from analysis import stats

FIGURES = ('gradient_noise_scale.png',)


def _ms(s: Dict[str, Any], fmt: str = '.0f') -> str:
  return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"


def _verdict(comparison: Dict[str, Any], lower: str, higher: str) -> str:
  """`analysis.stats.verdict`, with the p-value printed as recorded."""
  text = stats.verdict(comparison, lower, higher)
  p = comparison['p']
  return text if p is None or comparison['verdict'] == 'no verdict' else (
      text.replace('p < 0.0001', f'p = {p:.2g}'))


def mean_steps(numbers: Dict[str, Any], target: int) -> Dict[str, float]:
  """Per batch size, the mean over seeds of the steps to target ``target``
  (index into ``fractions``), None where a seed never reached it."""
  out = {}
  for b in numbers['batches']:
    s = [r['targets'][target]['best'][str(b)]['steps']
         for r in numbers['per_seed']]
    out[str(b)] = None if any(x is None for x in s) else float(np.mean(s))
  return out


def b_crit_trend(numbers: Dict[str, Any]) -> Dict[str, Any]:
  """`analysis.stats.compare` (paired t of the logs, over the seeds fitted
  at both) of B_crit at the deepest target against the shallowest: the
  paper's B_crit grows as the target loss falls (the runner records it as
  ``b_crit_trend``)."""
  pairs = [(r['targets'][-1]['b_crit'], r['targets'][0]['b_crit'])
           for r in numbers['per_seed']]
  pairs = [p for p in pairs if all(x is not None and x > 0 for x in p)]
  return stats.compare(np.log([p[0] for p in pairs]),
                       np.log([p[1] for p in pairs]), paired=True)


def conclusion(numbers: Dict[str, Any]) -> str:
  grows = _verdict(numbers['late_vs_early'], 'falls', 'grows')
  parts = [f"B_simple {_ms(numbers['b_simple_early'])} at loss "
           f"{numbers['loss_early']['mean']:.2f} -> "
           f"{_ms(numbers['b_simple_late'])} at "
           f"{numbers['loss_late']['mean']:.2f} ({grows})"]
  for t in numbers['per_target']:
    if t['b_crit'] is None:
      parts.append(f"{t['fraction']:.0%} of the gap: no fit")
      continue
    r = t['ratio']
    ci = '' if r is None or r['low'] is None else (
        f" [{r['low']:.2f}, {r['high']:.2f}]")
    ratio = '' if r is None else f", B_crit / B_simple = {r['ratio']:.2f}{ci}"
    v = _verdict(t['b_crit_vs_b_simple'], 'B_crit lower', 'B_crit higher')
    parts.append(f"closing {t['fraction']:.0%} of the gap to the entropy "
                 f"floor: B_crit {_ms(t['b_crit'])}{ratio} ({v})")
  if 'b_crit_trend' in numbers:
    v = _verdict(numbers['b_crit_trend'], 'falls', 'grows')
    parts.append(f'B_crit vs the target loss: {v} as the target falls')
  return '; '.join(parts)


def readme_row(numbers: Dict[str, Any]) -> str:
  b = numbers['batches']
  return ('| ![Gradient noise scale](docs/figures/gradient_noise_scale.png) '
          '| Critical batch size vs the simple gradient noise scale '
          '(McCandlish et al. 2018) of a 2-layer GPT on the Markov language, '
          f"{numbers['b_simple_late']['n']} seeds: B_simple = tr Σ / |G|² "
          f"measured along training at batch {numbers['base_batch']}, then "
          f"branches at batch {b[0]}-{b[-1]} (Adam, best of "
          f"{len(numbers['rate_factors'])} rates each) from step "
          f"{numbers['probe_steps'][-1]}; B_crit fitted to "
          'S = S_min (1 + B_crit / B) '
          '(`python -m experiments.reproduce gradient_noise_scale`): '
          f'{conclusion(numbers)}. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """B_simple grows as the loss falls (the paired test on log B_simple at
  full size; every seed where there is no verdict); the steps-examples
  trade-off bends: the steps fall with the batch size while the examples
  grow (first target, means over seeds), B_crit fitted on every seed and
  its mean inside the range of batch sizes; and the fitted B_crit is
  within a factor of 10 of B_simple at the branch point (geometric mean
  over seeds); with two targets or more, B_crit grows as the target loss
  falls (`b_crit_trend`)."""
  c = numbers['late_vs_early']
  early = numbers['b_simple_early']['values']
  late = numbers['b_simple_late']['values']
  grows = (c['verdict'] == 'a higher' if c['verdict'] != 'no verdict'
           else all(l > e for l, e in zip(late, early)))
  loss_falls = numbers['loss_late']['mean'] < numbers['loss_early']['mean']
  b = numbers['batches']
  steps = mean_steps(numbers, 0)
  first = numbers['per_target'][0]
  bends = (steps[str(b[0])] is not None and steps[str(b[-1])] is not None
           and steps[str(b[0])] > steps[str(b[-1])]
           and b[-1] * steps[str(b[-1])] > b[0] * steps[str(b[0])]
           and first['fitted_seeds'] == len(numbers['per_seed'])
           and b[0] <= first['b_crit']['mean'] <= b[-1])
  near = (first['b_crit'] is not None and first['ratio'] is not None
          and 0.1 < first['ratio']['ratio'] < 10)
  if first['ratio'] is None and first['b_crit'] is not None:  # One seed.
    near = 0.1 < first['b_crit']['mean'] / late[0] < 10
  out = {'b_simple_grows_as_loss_falls': bool(grows and loss_falls),
         'steps_examples_trade_off_bends': bool(bends),
         'b_crit_near_b_simple': bool(near)}
  if 'b_crit_trend' in numbers:  # Two targets or more (full size).
    t = numbers['b_crit_trend']
    out['b_crit_grows_as_target_falls'] = bool(
        t['verdict'] == 'a higher' if t['verdict'] != 'no verdict'
        else t['difference'] > 0)
  return out


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """B_simple against the eval loss along training (per seed, with its
  standard error), and steps against examples to each target (mean over
  seeds) with the fitted S = S_min (1 + B_crit / B) and B = B_simple
  marked."""
  fig, axes = plots.figure(2, width=4.8, height=3.6)
  for i, r in enumerate(numbers['per_seed']):
    a = r['along']
    axes[0].errorbar([x['eval_loss'] for x in a], [x['b_simple'] for x in a],
                     yerr=[x['b_simple_stderr'] for x in a], fmt='o-',
                     color=f'C{i}', capsize=2, label=f"seed {r['seed']}")
  axes[0].invert_xaxis()
  axes[0].set_xlabel('eval loss (training goes right)')
  axes[0].set_ylabel(r'$B_\mathrm{simple}$ (sequences)')
  axes[0].legend(fontsize=6)
  b = np.asarray(numbers['batches'], np.float64)
  grid = np.geomspace(b[0], b[-1], 50)
  b_simple = numbers['b_simple_late']['mean']
  for k, t in enumerate(numbers['per_target']):
    steps = mean_steps(numbers, k)
    ok = [x for x in numbers['batches'] if steps[str(x)] is not None]
    s = np.asarray([steps[str(x)] for x in ok])
    axes[1].plot(np.asarray(ok) * s, s, 'o', color=f'C{k}',
                 label=f"{t['fraction']:.0%} of the gap")
    fits = [r['targets'][k] for r in numbers['per_seed']]
    if t['b_crit'] is not None and all(f['s_min'] for f in fits):
      s_min = np.mean([f['s_min'] for f in fits])
      b_crit = t['b_crit']['mean']
      fit = s_min * (1 + b_crit / grid)
      axes[1].plot(grid * fit, fit, '-', color=f'C{k}', lw=1,
                   label=rf"fit, $B_\mathrm{{crit}}$ = {b_crit:.0f}")
      s_at = s_min * (1 + b_crit / b_simple)
      axes[1].plot([b_simple * s_at], [s_at], '*', color=f'C{k}', ms=10)
  axes[1].set_xscale('log')
  axes[1].set_yscale('log')
  axes[1].set_xlabel('examples to target (sequences)')
  axes[1].set_ylabel('steps to target')
  axes[1].set_title(r'$\star$: $B = B_\mathrm{simple}$ at the branch',
                    fontsize=8)
  axes[1].legend(fontsize=6)
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
