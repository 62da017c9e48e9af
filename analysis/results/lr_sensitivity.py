"""The LR-sensitivity reproduction read from its numbers: the notebook's
table, the conclusion, claims, README row and figure
(`experiments.reproductions.lr_sensitivity` records them in
``results/lr_sensitivity.json``)."""

import os
from typing import Any, Dict, List

import numpy as np

from analysis import plots
from analysis import results


FIGURES = ('lr_sensitivity.png',)
# The variants (their config settings), the baseline first.
VARIANTS = {'baseline': {'qk_norm': False, 'z_loss': 0.0},
            'qk-norm + z-loss': {'qk_norm': True, 'z_loss': 1e-4}}


def conclusion(numbers: Dict[str, Any]) -> str:
  """The sentence the README and the notebook print."""
  s, (base, fixed) = numbers['summary'], list(VARIANTS)
  # The comparisons are of the qk-norm + z-loss variant minus the baseline.
  sens = results.verdict(numbers['sensitivity_comparison'],
                         'qk-norm + z-loss less sensitive',
                         'qk-norm + z-loss more sensitive')
  best = results.verdict(numbers['best_loss_comparison'],
                         'qk-norm + z-loss lower', 'baseline lower')
  ms = results.fmt_mean_std
  return (f"LR sensitivity {ms(s[base]['sensitivity'])} (baseline) vs "
          f"{ms(s[fixed]['sensitivity'])} (qk-norm + z-loss): {sens}; best "
          f"final loss {ms(s[base]['best_loss'])} at LR "
          f"{s[base]['best_rate']:g} vs {ms(s[fixed]['best_loss'])} at LR "
          f"{s[fixed]['best_rate']:g} ({best})")


def report_lines(numbers: Dict[str, Any]) -> List[str]:
  """The notebook's table (final loss per variant and rate, capped at the
  loss at init) and conclusion, every number formatted from ``numbers``."""
  lines = []
  for v in VARIANTS:
    s, sw = numbers['summary'][v], numbers['sweep'][v]
    for r in numbers['learning_rates']:
      k = repr(r)
      blown = sum(x is None or x >= numbers['setup']['loss_at_init']
                  for x in sw[k]['eval_loss'])
      attn = [x for x in sw[k]['attn_logit_max'] if x is not None]
      lines.append(
          f"{v:>16} LR {r:<8g} final eval loss "
          f"{results.fmt_mean_std(s['loss'][k]):>15} (capped runs {blown}), "
          'max attention logit '
          + (f'{max(attn):.3g}' if attn else 'not finite'))
    lines.append(f"{v:>16} LR sensitivity "
                 f"{results.fmt_mean_std(s['sensitivity'])}")
  lines.append(conclusion(numbers) + '.')
  return lines


def max_attention_logit(numbers: Dict[str, Any], variant: str) -> float:
  """The largest attention logit of any finished run of ``variant``."""
  sw = numbers['sweep'][variant]
  return max(x for k in sw for x in sw[k]['attn_logit_max'] if x is not None)


def readme_row(numbers: Dict[str, Any]) -> str:
  rates, setup = numbers['learning_rates'], numbers['setup']
  n_seeds = numbers['summary']['baseline']['sensitivity']['n']
  base, fixed = VARIANTS
  return ('| ![LR sensitivity](docs/figures/lr_sensitivity.png) | Final eval '
          f'loss vs peak learning rate ({rates[0]:g} to {rates[-1]:g}, factor '
          f"2; {n_seeds} seeds; {setup['num_steps']} steps of the 2-layer GPT, "
          '`python -m experiments.reproduce lr_sensitivity`), with and without '
          f'qk-norm + z-loss (Wortsman et al. 2023): {conclusion(numbers)}. '
          'The largest attention logit of the final parameters reaches '
          f'{max_attention_logit(numbers, base):.2g} without qk-norm, '
          f'{max_attention_logit(numbers, fixed):.2g} with it. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """The paper's claim (lower sensitivity beyond noise), and the shape of
  the curve any sweep must show: high rates end worse than the best."""
  s = numbers['summary']
  c = numbers['sensitivity_comparison']
  keys = [repr(r) for r in numbers['learning_rates']]
  return {
      'qk_norm_z_loss_less_sensitive': results.test_word(c) == 'a lower',
      'largest_rate_worse_than_best': all(
          s[v]['loss'][keys[-1]]['mean'] > s[v]['best_loss']['mean'] + 0.1
          for v in s)}


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Final eval loss, the largest attention logit and ``log Z`` vs rate."""
  rates = numbers['learning_rates']
  keys = [repr(r) for r in rates]
  fig, axes = plots.figure(3, width=4.4, height=3.6)
  for v in VARIANTS:
    s, sw = numbers['summary'][v], numbers['sweep'][v]
    axes[0].errorbar(rates, [s['loss'][k]['mean'] for k in keys],
                     yerr=[s['loss'][k]['std'] for k in keys], fmt='o-',
                     capsize=3, label=f"{v} (sensitivity "
                     f"{s['sensitivity']['mean']:.3f})")
    for ax, name in ((axes[1], 'attn_logit_max'), (axes[2], 'log_z')):
      vals = [np.nanmean([np.nan if x is None else x for x in sw[k][name]])
              for k in keys]
      ax.plot(rates, vals, 'o-', label=v)
  axes[0].axhline(numbers['setup']['loss_at_init'], color='gray', ls=':',
                  lw=0.8, label='loss at init')
  axes[0].set_title('final eval loss (mean ± std over seeds)')
  axes[1].set_title('largest attention logit (final params)')
  axes[2].set_title('mean log Z of the output (final params)')
  for ax in axes:
    ax.set_xscale('log')
    ax.set_xticks(rates, [f'{r:g}' for r in rates], rotation=45)
    ax.minorticks_off()
    ax.set_xlabel('peak learning rate')
    ax.legend(fontsize=7)
  axes[1].set_yscale('log')
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
