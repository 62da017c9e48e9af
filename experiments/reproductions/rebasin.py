r"""Git Re-Basin: the barrier between two independently trained MLPs, before
and after weight matching, at several widths.

  python -m experiments.reproduce rebasin [--size=smoke|full] [--seeds=0,1,2,3,4]

Claim (Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
Permutation Symmetries", ICLR 2023, Fig. 2 and Sec. 5; Entezari et al. 2022's
conjecture): two networks trained from different initializations and data
orders have a large loss barrier on the straight line between them, but after
permuting one network's hidden units to match the other's (weight matching)
the barrier is far lower, and it falls toward zero as the width grows.

What runs, per width and seed ``s``: `configs/jacobian.py`'s digits MLP with
two hidden ReLU layers of that width (SGD with momentum, cosine schedule),
trained twice by `dynamics.train.train_and_evaluate` with ``config.seed`` =
``2 s`` and ``2 s + 1`` (different init and data order). The barrier
(Frankle et al. 2020: the largest rise of the loss above the chord between
the endpoint losses, `analysis.landscape.barrier`) of the train loss on 8
training batches, along 11 points of the line, before and after
`analysis.landscape.align` (`analysis.landscape.interpolate` with
``align=True``). Verdicts: `analysis.stats.compare` (paired t over seeds).
"""

import os
import tempfile
from typing import Any, Dict, Sequence

import numpy as np

from analysis import landscape, stats
from configs import jacobian
from dynamics import runs, train

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
WIDTHS = {'full': (16, 64, 256), 'smoke': (8, 32)}
STEPS = {'full': 300, 'smoke': 60}
ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 10))
NUM_BATCHES = 8


def config(size: str, width: int, seed: int = 0):
  """The digits MLP of ``width`` (two hidden ReLU layers)."""
  c = jacobian.get_config()
  c.name = f'rebasin_w{width}'
  c.num_steps = STEPS[size]
  c.log_every = c.num_steps
  c.eval_every = c.num_steps
  c.checkpoint.every_steps = c.num_steps
  c.progress = False
  c.model.hidden_sizes = (width, width)
  c.model.activation = 'relu'
  c.seed = seed
  return c


def configs(size: str) -> Dict[str, Any]:
  return {f'width {w}': runs.config_record(config(size, w))
          for w in WIDTHS[size]}


def _train(size, width, seed, root):
  workdir = os.path.join(root, f'w{width}_s{seed}')
  train.train_and_evaluate(config(size, width, seed), workdir)
  return runs.Run.open(workdir)


def run(size: str, seeds: Sequence[int], log) -> Dict[str, Any]:
  per_width = {}
  with tempfile.TemporaryDirectory(prefix='rebasin_') as root:
    for w in WIDTHS[size]:
      rows = []
      for s in seeds:
        a, b = _train(size, w, 2 * s, root), _train(size, w, 2 * s + 1, root)
        row = {'seed_a': 2 * s, 'seed_b': 2 * s + 1}
        for name, aligned in (('naive', False), ('matched', True)):
          r = landscape.interpolate(a, None, b, None, ALPHAS,
                                    num_batches=NUM_BATCHES, align=aligned)
          row[name] = {'train_loss': r['train']['loss'],
                       'train_barrier': r['train']['barrier'],
                       'eval_barrier': r['eval']['barrier']}
        row['endpoint_train_loss'] = [row['naive']['train_loss'][0],
                                      row['naive']['train_loss'][-1]]
        log(f"width {w} seed {s}: train barrier "
            f"{row['naive']['train_barrier']:.4f} -> "
            f"{row['matched']['train_barrier']:.4f} after matching")
        rows.append(row)
      naive = [r['naive']['train_barrier'] for r in rows]
      matched = [r['matched']['train_barrier'] for r in rows]
      per_width[str(w)] = {
          'runs': rows, 'naive': stats.summary(naive),
          'matched': stats.summary(matched),
          'matched_vs_naive': stats.compare(matched, naive, paired=True)}
  widths = [str(w) for w in WIDTHS[size]]
  narrow, wide = per_width[widths[0]], per_width[widths[-1]]
  return {
      'widths': list(WIDTHS[size]), 'alphas': list(ALPHAS),
      'num_steps': STEPS[size], 'num_batches': NUM_BATCHES,
      'per_width': per_width,
      'wide_vs_narrow_matched': stats.compare(
          wide['matched']['values'], narrow['matched']['values'],
          paired=True)}
