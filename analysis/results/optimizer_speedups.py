"""The optimizer-speedups reproduction read from its numbers: the conclusion,
claims, README row and figure (`experiments.reproductions.optimizer_speedups`
records them in ``results/optimizer_speedups.json``)."""

import os
from typing import Any, Dict, List

from analysis import plots
from analysis import stats

FIGURES = ('optimizer_speedups.png',)
BASELINE, UNTUNED = 'adamw', 'adamw (untuned)'


def _newer(numbers: Dict[str, Any]) -> List[str]:
  return [n for n in numbers['comparison']['optimizers']
          if n not in (BASELINE, UNTUNED)]


def _ratio(r: Dict[str, Any]) -> str:
  if r['low'] is None:
    return f"{r['ratio']:.2f}x"
  return f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def conclusion(numbers: Dict[str, Any]) -> str:
  """The sentence the README prints: each speedup with its 95% interval and
  the verdict on the claim, naming test, n and p."""
  o = numbers['comparison']['optimizers']
  tuning = numbers['comparison']['tuning']
  parts = [f"tuned AdamW (rate {tuning[BASELINE]['best']['learning_rate']:g}) "
           f"over untuned (rate {numbers['setup']['untuned_learning_rate']:g})"
           f": {_ratio(o[BASELINE]['speedup_vs_untuned_adamw'])}"]
  for name in _newer(numbers):
    words = stats.verdict(numbers['log_speedup_untuned_vs_tuned'][name],
                          'untuned speedup smaller', 'untuned speedup larger')
    parts.append(
        f"{name} (rate {tuning[name]['best']['learning_rate']:g}) over tuned "
        f"AdamW {_ratio(o[name]['speedup_vs_tuned_adamw'])}, over untuned "
        f"{_ratio(o[name]['speedup_vs_untuned_adamw'])} ({words})")
  return '; '.join(parts)


def readme_row(numbers: Dict[str, Any]) -> str:
  s = numbers['setup']
  n = len(numbers['eval_seeds'])
  return ('| ![optimizer speedups](docs/figures/optimizer_speedups.png) | '
          'Speedup (steps to the baseline\'s final loss, paired per seed, 95% '
          f"interval) of each optimizer at its tuned peak rate, {n} seeds, "
          f"{s['num_steps']} steps of the {s['num_params']:,}-parameter GPT "
          '(`python -m experiments.reproduce optimizer_speedups`; Wen et al. '
          f'2025): {conclusion(numbers)}. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """Wen et al.'s claim at this scale: tuning AdamW's rate alone speeds it
  up, and every newer optimizer's speedup over untuned AdamW exceeds its
  speedup over tuned AdamW (means of the per-seed speedups)."""
  o = numbers['comparison']['optimizers']
  out = {'tuning_adamw_speeds_it_up':
         o[BASELINE]['speedup_vs_untuned_adamw']['ratio'] > 1.0}
  for name in _newer(numbers):
    out[f'untuned_adamw_overstates_{name}'] = (
        o[name]['speedup_vs_untuned_adamw']['ratio']
        > o[name]['speedup_vs_tuned_adamw']['ratio'])
  return out


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Loss curves at the tuned rates (untuned AdamW dashed) and final loss vs
  rate on the tuning seed (`plots.optimizer_comparison`)."""
  return [plots.optimizer_comparison(numbers['comparison'],
                                     os.path.join(figures_dir, FIGURES[0]))]
