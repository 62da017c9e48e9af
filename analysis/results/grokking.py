"""The grokking reproduction read from its numbers: claims, README row and
figure (`experiments.reproductions.grokking` records them in
``results/grokking.json``)."""

import os
from typing import Any, Dict, List, Optional

from analysis import plots
from analysis import results


FIGURES = ('grokking.png',)
# The variants and their configs/grokking.py variant strings.
VARIANTS = {'weight decay': None, 'no weight decay': 'nowd',
            'StableMax': 'stablemax', '⊥Grad': 'orthograd'}


def variants_of(numbers: Dict[str, Any]) -> List[str]:
  """The variants a results file holds, in `VARIANTS` order."""
  return [v for v in VARIANTS if v in numbers['summary']]


def describe(numbers: Dict[str, Any], variant: str) -> str:
  """E.g. ``'test accuracy 50% at step 1050 ± 80, 90% at step 1750 ± 120
  (1700 ± 120 steps after memorizing)'``; a target that only some seeds
  reach says how many (``'in 2/3 seeds'``); the final test accuracy follows
  when some seed misses 90%."""
  s, setup = numbers['summary'][variant], numbers['setup']
  parts = []
  for t in setup['targets']:
    r = s['test_reaches'][repr(t)]
    if r['reached']:
      seeds = '' if r['reached'] == s['seeds'] else (
          f" in {r['reached']}/{s['seeds']} seeds")
      parts.append(f"{t:.0%} at step {results.fmt_mean_std(r['step'], 0)}{seeds}")
    else:
      parts.append(f"{t:.0%} not reached in {setup['num_steps']} steps")
  notes = []
  if s['delay'] is not None:
    notes.append(f"{results.fmt_mean_std(s['delay'], 0)} steps after "
                 'memorizing')
  if s['reached'] < s['seeds']:
    notes.append('final test accuracy '
                 f"{results.fmt_mean_std(s['final_test_accuracy'], 2)}")
  return ('test accuracy ' + ', '.join(parts)
          + (f" ({', '.join(notes)})" if notes else ''))


def verdict(numbers: Dict[str, Any], variant: str, target: float) -> str:
  """How ``variant``'s first step at ``target`` compares with weight
  decay's: earlier / later / within noise, or why there is no verdict."""
  c = numbers['comparisons_with_weight_decay'].get(variant, {}).get(repr(target))
  if c is None:
    return 'not comparable (a seed misses it)'
  return results.verdict(c, 'earlier than weight decay',
                        'later than weight decay',
                        within='within noise of weight decay')


def _never(step: Optional[int]) -> float:
  return float('inf') if step is None else float(step)


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """Per seed, at any size: weight decay memorizes while the test accuracy
  is still below 10%; ⊥Grad reaches 50% test accuracy before weight decay
  does. At full size also: weight decay reaches 90% long after memorizing
  (delay over half its time to 90%); ⊥Grad removes most of that delay
  (mean delay under half weight decay's); StableMax groks without weight
  decay (every seed reaches 90%); no weight decay never does."""
  curves, s = numbers['curves'], numbers['summary']
  out = {}
  wd = curves.get('weight decay')
  if wd is not None:
    out['weight_decay_memorizes_first'] = all(
        r['memorized_at'] is not None and
        r['test_accuracy'][r['steps'].index(r['memorized_at'])] < 0.1
        for r in wd)
  if wd is not None and '⊥Grad' in curves:
    out['orthograd_reaches_half_earlier'] = all(
        _never(o['test_reaches']['0.5']) < _never(w['test_reaches']['0.5'])
        for o, w in zip(curves['⊥Grad'], wd))
  if numbers['setup']['num_steps'] >= 2000 and wd is not None:
    w = s['weight decay']
    out['weight_decay_groks'] = (
        w['reached'] == w['seeds'] and all(
            r['generalized_at'] - r['memorized_at'] > 0.5 * r['generalized_at']
            for r in wd))
    if '⊥Grad' in s and w['delay'] is not None:
      o = s['⊥Grad']
      out['orthograd_removes_most_of_the_delay'] = (
          o['reached'] == o['seeds'] and o['delay'] is not None
          and o['delay']['mean'] < 0.5 * w['delay']['mean'])
    if 'StableMax' in s:
      out['stablemax_groks_without_weight_decay'] = (
          s['StableMax']['reached'] == s['StableMax']['seeds'])
    if 'no weight decay' in s:
      out['no_weight_decay_does_not_grok'] = s['no weight decay']['reached'] == 0
  return out


CLAIM_TEXT = {
    'weight_decay_memorizes_first': 'weight decay memorizes first',
    'orthograd_reaches_half_earlier':
        '⊥Grad reaches 50% first in every seed (an order per seed, no test)',
    'weight_decay_groks': 'weight decay groks after a long delay',
    'orthograd_removes_most_of_the_delay': '⊥Grad removes most of the delay',
    'stablemax_groks_without_weight_decay':
        'StableMax groks without weight decay',
    'no_weight_decay_does_not_grok': 'no weight decay, no grokking',
}


def readme_row(numbers: Dict[str, Any]) -> str:
  setup = numbers['setup']
  parts = [f"{v}: {describe(numbers, v)}" for v in variants_of(numbers)]
  extra = [f"⊥Grad reaches {t:.0%}: {verdict(numbers, '⊥Grad', t)}"
           for t in setup['targets']] if '⊥Grad' in numbers['summary'] else []
  found = claims(numbers)
  held = [CLAIM_TEXT[k] for k, v in found.items() if v]
  missed = [CLAIM_TEXT[k] for k, v in found.items() if not v]
  n_seeds = numbers['summary'][variants_of(numbers)[0]]['seeds']
  return ('| ![grokking](docs/figures/grokking.png) | Grokking on (a + b) mod '
          f"{setup['modulus']} (`configs/grokking.py`, "
          f"{setup['train_fraction']:.0%} of pairs for training, {n_seeds} "
          f"seeds, {setup['num_steps']} full-batch steps): "
          + '; '.join(parts + extra) + '. Reproduced: '
          + (', '.join(held) or 'none') + '; not reproduced at this scale: '
          + (', '.join(missed) or 'none') + '. |')


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Train (dashed) and test (solid) accuracy per variant, every seed."""
  variants = variants_of(numbers)
  fig, axes = plots.figure(len(variants), width=3.8, height=3.3)
  for ax, v in zip(axes, variants):
    per_seed = numbers['curves'][v]
    for i, r in enumerate(per_seed):
      ax.plot(r['steps'], r['test_accuracy'], '-', color=f'C{i}', lw=1,
              label='test' if i == 0 else None)
      ax.plot(r['steps'], r['train_accuracy'], '--', color=f'C{i}', lw=1,
              label='train' if i == 0 else None)
    ax.axhline(numbers['setup']['target'], color='gray', ls=':', lw=0.8)
    ax.set_title(v)
    ax.set_xlabel('step')
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
  axes[0].set_ylabel('accuracy (one color per seed)')
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
