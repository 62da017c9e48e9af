r"""Grokking on modular addition: weight decay, StableMax and ⊥Grad.

  python -m experiments.reproduce grokking [--size=smoke|full] [--seeds=0,1,2,3,4]

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

from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from analysis import results
from analysis.results.grokking import VARIANTS
from configs import grokking as grokking_config
from dynamics import runs

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
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
  return {v: runs.config_record(config(size, v)) for v in VARIANTS_AT[size]}


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
                          'step': results.mean_std(hit) if hit else None}
    summary[v] = {
        'seeds': len(per_seed), 'reached': len(reached),
        'test_reaches': reaches,
        'generalized_at': results.mean_std(reached) if reached else None,
        'memorized_at': results.mean_std(memorized) if memorized else None,
        'delay': results.mean_std(delays) if delays else None,
        'final_test_accuracy': results.mean_std(
            [r['test_accuracy'][-1] for r in per_seed]),
        'final_train_accuracy': results.mean_std(
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
        comparisons[v][repr(t)] = results.compare(a, b)
  return {'setup': setup, 'curves': curves, 'summary': summary,
          'comparisons_with_weight_decay': comparisons}
