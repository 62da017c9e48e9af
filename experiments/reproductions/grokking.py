r"""Grokking on modular addition: weight decay, StableMax and ⊥Grad.

  python -m experiments.reproduce grokking [--size=smoke|full] [--seeds=0,1,2]

Claims. Power et al. (2022): trained with weight decay, a small network
reaches 100% training accuracy long before its test accuracy rises -- the
grokking delay -- and then generalizes. Prieto et al. ("Grokking at the Edge
of Numerical Stability", 2025): without weight decay the delay comes from
Softmax Collapse and naive loss minimization along the weights' own
direction; StableMax (a softmax that cannot collapse) lets the network grok
without regularization, and the ⊥Grad update (the gradient minus its
component along each weight) removes most of the delay.

What runs, per variant and seed (init and the train/test split): the
one-hidden-layer ReLU MLP of `configs/grokking.py` on ``(a + b) mod 31``,
half the pairs for training, full-batch AdamW at a constant rate -- with
weight decay 1 (the base config), without (``:nowd``), with StableMax and no
weight decay (``:stablemax``), and with ⊥Grad and no weight decay
(``:orthograd``). ``Run.train_step`` takes every update (one compilation per
variant, shared by the seeds); every ``EVAL_EVERY`` steps the held-out pairs
are evaluated (`Run.evaluate`). Reported per variant: the first evaluated
step at which the test accuracy reaches ``TARGET`` (None: not within the
run), the first at which the training accuracy reaches ``MEMORIZED``, the
delay between them, and the final accuracies; mean ± std over the seeds
that reach the target, and how many do.
"""

import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from analysis import plots
from configs import grokking as grokking_config
from dynamics import runs
from experiments.reproductions import common

FIGURES = ('grokking.png',)
DEFAULT_SEEDS = (0, 1, 2)
VARIANTS = {'weight decay': None, 'no weight decay': 'nowd',
            'StableMax': 'stablemax', '⊥Grad': 'orthograd'}
VARIANTS_AT = {'full': tuple(VARIANTS), 'smoke': ('weight decay', '⊥Grad')}
EVAL_EVERY = {'full': 50, 'smoke': 25}
TARGETS = (0.5, 0.9)  # Test accuracies whose first step is reported.
TARGET = 0.9          # The one that counts as generalized (the delay's end).
MEMORIZED = 0.99      # Training accuracy that counts as memorized.


def config(size: str, variant: str, seed: int = 0):
  """`configs/grokking.py` (``:smoke_sweep`` at smoke size) for one variant."""
  parts = [VARIANTS[variant]] + (['smoke_sweep'] if size == 'smoke' else [])
  c = grokking_config.get_config(','.join(p for p in parts if p) or None)
  c.seed = int(seed)
  return c


def configs(size: str) -> Dict[str, Any]:
  return {v: common.config_record(config(size, v)) for v in VARIANTS_AT[size]}


def variants_of(numbers: Dict[str, Any]) -> List[str]:
  """The variants a results file holds, in `VARIANTS` order."""
  return [v for v in VARIANTS if v in numbers['summary']]


def first_step(steps: Sequence[int], values: Sequence[float],
               threshold: float) -> Optional[int]:
  """The first step whose value reaches ``threshold`` (None if none does).

  Example:
    >>> first_step([0, 50, 100], [0.1, 0.95, 0.97], 0.9)
    50
  """
  for s, v in zip(steps, values):
    if v >= threshold:
      return int(s)
  return None


def _train_variant(size: str, variant: str, seeds: Sequence[int], log
                   ) -> List[Dict[str, Any]]:
  """Accuracy curves of every seed of one variant."""
  every = EVAL_EVERY[size]
  run0 = runs.Run(config(size, variant, seeds[0]))
  out = []
  for seed in seeds:
    run = run0 if seed == seeds[0] else runs.Run(config(size, variant, seed))
    state = run.init_state()
    batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(0))
    if run.dataset.batch_size < run.dataset.num_train:
      raise ValueError('grokking runs full-batch: data.batch_size must be at '
                       f'least the {run.dataset.num_train} training pairs')
    steps, train_acc, test_acc = [], [], []
    for step in range(1, run.config.num_steps + 1):
      state, metrics = run0.train_step(state, batch)
      if step % every == 0:
        ev = run.evaluate(state.params, state.model_state,
                          eval_fn=run0.eval_step)
        # The step's metrics are of the batch before its update: evaluate
        # the training pairs after it, as the test pairs are.
        tr = run0.eval_step(state.params, state.model_state, batch)
        steps.append(step)
        train_acc.append(float(tr['accuracy']))
        test_acc.append(float(ev['accuracy']))
    rec = {'steps': steps, 'train_accuracy': train_acc,
           'test_accuracy': test_acc,
           'memorized_at': first_step(steps, train_acc, MEMORIZED),
           'test_reaches': {repr(t): first_step(steps, test_acc, t)
                            for t in TARGETS}}
    rec['generalized_at'] = rec['test_reaches'][repr(TARGET)]
    log(f"{variant} seed {seed}: train {train_acc[-1]:.3f}, test "
        f"{test_acc[-1]:.3f}, memorized at {rec['memorized_at']}, "
        f"test >= {TARGET} at {rec['generalized_at']}")
    out.append(rec)
  return out


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  seeds = [int(s) for s in seeds]
  curves = {v: _train_variant(size, v, seeds, log) for v in VARIANTS_AT[size]}
  c = config(size, 'weight decay')
  return summarize(curves, {'num_steps': int(c.num_steps),
                            'eval_every': EVAL_EVERY[size],
                            'modulus': int(c.data.modulus),
                            'train_fraction': float(c.data.train_fraction),
                            'targets': list(TARGETS), 'target': TARGET,
                            'memorized': MEMORIZED})


def summarize(curves: Dict[str, List[Dict[str, Any]]],
              setup: Dict[str, Any]) -> Dict[str, Any]:
  summary = {}
  for v, per_seed in curves.items():
    reached = [r['generalized_at'] for r in per_seed
               if r['generalized_at'] is not None]
    memorized = [r['memorized_at'] for r in per_seed
                 if r['memorized_at'] is not None]
    delays = [r['generalized_at'] - r['memorized_at'] for r in per_seed
              if r['generalized_at'] is not None and r['memorized_at'] is not None]
    reaches = {}
    for t in setup['targets']:
      hit = [r['test_reaches'][repr(t)] for r in per_seed
             if r['test_reaches'][repr(t)] is not None]
      reaches[repr(t)] = {'reached': len(hit),
                          'step': common.mean_std(hit) if hit else None}
    summary[v] = {
        'seeds': len(per_seed), 'reached': len(reached),
        'test_reaches': reaches,
        'generalized_at': common.mean_std(reached) if reached else None,
        'memorized_at': common.mean_std(memorized) if memorized else None,
        'delay': common.mean_std(delays) if delays else None,
        'final_test_accuracy': common.mean_std(
            [r['test_accuracy'][-1] for r in per_seed]),
        'final_train_accuracy': common.mean_std(
            [r['train_accuracy'][-1] for r in per_seed])}
  comparisons = {}
  base = curves.get('weight decay')
  for v in curves:
    if v == 'weight decay' or base is None:
      continue
    comparisons[v] = {}
    for t in setup['targets']:
      a = [r['test_reaches'][repr(t)] for r in curves[v]]
      b = [r['test_reaches'][repr(t)] for r in base]
      if None not in a and None not in b:
        comparisons[v][repr(t)] = common.compare(a, b)
  return {'setup': setup, 'curves': curves, 'summary': summary,
          'comparisons_with_weight_decay': comparisons}


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
      parts.append(f"{t:.0%} at step {common.fmt_mean_std(r['step'], 0)}{seeds}")
    else:
      parts.append(f"{t:.0%} not reached in {setup['num_steps']} steps")
  notes = []
  if s['delay'] is not None:
    notes.append(f"{common.fmt_mean_std(s['delay'], 0)} steps after "
                 'memorizing')
  if s['reached'] < s['seeds']:
    notes.append('final test accuracy '
                 f"{common.fmt_mean_std(s['final_test_accuracy'], 2)}")
  return ('test accuracy ' + ', '.join(parts)
          + (f" ({', '.join(notes)})" if notes else ''))


def verdict(numbers: Dict[str, Any], variant: str, target: float) -> str:
  """How ``variant``'s first step at ``target`` compares with weight
  decay's: earlier / later / within noise, or why there is no verdict."""
  c = numbers['comparisons_with_weight_decay'].get(variant, {}).get(repr(target))
  if c is None:
    return 'not comparable (a seed misses it)'
  return common.verdict(c, 'earlier than weight decay',
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
    'orthograd_reaches_half_earlier': '⊥Grad reaches 50% first',
    'weight_decay_groks': 'weight decay groks after a long delay',
    'orthograd_removes_most_of_the_delay': '⊥Grad removes most of the delay',
    'stablemax_groks_without_weight_decay':
        'StableMax groks without weight decay',
    'no_weight_decay_does_not_grok': 'no weight decay, no grokking',
}


def readme_row(numbers: Dict[str, Any]) -> str:
  setup = numbers['setup']
  parts = [f"{v}: {describe(numbers, v)}" for v in variants_of(numbers)]
  extra = [f"⊥Grad reaches {t:.0%} {verdict(numbers, '⊥Grad', t)}"
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
