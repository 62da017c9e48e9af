r"""Frankle et al.'s instability analysis: the barrier between two copies of a
network spawned from the parent's checkpoint at step k and trained on with
different data orders, as a function of k.

  python -m experiments.reproduce lmc_spawn [--size=smoke|full] [--seeds=0,1,2,3,4]

Claim (Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", ICML 2020, Fig. 3-4): two copies of a network
trained from the same point with different SGD noise (data order) end in
minima separated by a loss barrier when spawned at initialization (k = 0),
but the barrier falls to about zero when they are spawned after a little
training: the network becomes *stable to SGD noise* early.

What runs, per seed ``s``: the parent, a small CNN on scikit-learn's digits
(`configs/jacobian.py`'s data and optimizer: SGD with momentum 0.9, rate 0.1
cosine-decayed to 0, batch 64), trained by `dynamics.train.train_and_evaluate`
with ``config.seed = s``, keeping its checkpoints at every spawn step k. Each
child restores the parent's whole state at step k (`dynamics.runs.Run.state`:
parameters, momentum, step) and trains to the parent's last step with the
parent's learning rates (`dynamics.replay.make_scan_train`, the same update as
the loop) on the batches ``k ..`` of the digits data ordered by its own seed
(`child_seeds`: ``1000 + 2 s`` and ``1001 + 2 s``; the parent's data position
is kept, only the order differs). The barrier (Frankle et al.: the largest
rise of the loss above the chord between the endpoint losses,
`analysis.landscape.barrier`) of the train loss on 8 training batches, along
11 points of the line between the two children
(`analysis.landscape.interpolate_params`); the held-out error barrier beside
it. Verdict: `analysis.stats.compare` (paired t over seeds) of the barrier at
the last k against k = 0.
"""

import os
import tempfile
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from analysis import landscape, stats
from configs import jacobian
from dynamics import data as data_lib
from dynamics import replay, runs, train

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
STEPS = {'full': 300, 'smoke': 120}
SPAWN_STEPS = {'full': (0, 10, 30, 100), 'smoke': (0, 40)}
CHANNELS = {'full': (16, 16), 'smoke': (8, 8)}
ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 10))
NUM_BATCHES = 8


def config(size: str, seed: int = 0):
  """The parent: a two-conv-layer CNN on digits, keeping the spawn steps."""
  c = jacobian.get_config()
  c.name = 'lmc_spawn'
  c.num_steps = STEPS[size]
  c.log_every = c.eval_every = c.num_steps
  c.checkpoint.every_steps = c.num_steps
  c.checkpoint.keep_steps = SPAWN_STEPS[size]
  c.progress = False
  c.model.name = 'cnn'
  c.model.channels = CHANNELS[size]
  c.model.activation = 'relu'
  c.seed = seed
  return c


def configs(size: str) -> Dict[str, Any]:
  return {'parent': runs.config_record(config(size))}


def child_seeds(seed: int) -> Tuple[int, int]:
  """The data-order seeds of the two children of parent ``seed``."""
  return 1000 + 2 * seed, 1001 + 2 * seed


def spawn(parent: runs.Run, k: int, data_seed: int, scan=None):
  """The parameters of a child spawned from ``parent``'s checkpoint at step
  ``k`` and trained to the parent's last step on the data order of
  ``data_seed`` (batches ``k .. num_steps - 1``), with the parent's rates."""
  c = parent.config
  scan = scan or replay.make_scan_train(parent, metric_names=())
  rates = np.array([parent.schedule(t) for t in range(c.num_steps)])
  data_config = c.copy_and_resolve_references()
  data_config.seed = data_seed
  batches = replay.stacked_batches(data_lib.get_dataset(data_config),
                                   c.num_steps - k, start=k)
  final, _ = scan(parent.state(k), batches, rates)
  return final.params


def run(size: str, seeds: Sequence[int], log) -> Dict[str, Any]:
  ks = SPAWN_STEPS[size]
  rows = []
  with tempfile.TemporaryDirectory(prefix='lmc_spawn_') as root:
    for s in seeds:
      workdir = os.path.join(root, f's{s}')
      train.train_and_evaluate(config(size, s), workdir)
      parent = runs.Run.open(workdir)
      scan = replay.make_scan_train(parent, metric_names=())
      metric = landscape.Metrics(parent.model, parent.options)
      train_b = [parent.dataset.train_batch(i) for i in range(NUM_BATCHES)]
      eval_b = [parent.dataset.eval_batch(i) for i in range(NUM_BATCHES)]
      row = {'seed': s, 'child_seeds': list(child_seeds(s)), 'per_k': {}}
      for k in ks:
        pa, pb = (spawn(parent, k, d, scan) for d in child_seeds(s))
        ends = (pa, {}), (pb, {})  # (params, model_state): no state here.
        tr = landscape.interpolate_params(metric, *ends, ALPHAS, train_b)
        ev = landscape.interpolate_params(metric, *ends, ALPHAS, eval_b)
        err = [1 - a for a in ev['accuracy']]
        row['per_k'][str(k)] = {
            'train_loss': tr['loss'], 'train_barrier': tr['barrier'],
            'eval_error': err,
            'eval_error_barrier': landscape.barrier(ALPHAS, err)}
        log(f'seed {s} k {k}: train barrier {tr["barrier"]:.4f}')
      rows.append(row)
  per_k = {}
  for k in ks:
    per_k[str(k)] = {
        'train_barrier': stats.summary(
            [r['per_k'][str(k)]['train_barrier'] for r in rows]),
        'eval_error_barrier': stats.summary(
            [r['per_k'][str(k)]['eval_error_barrier'] for r in rows])}
  first, last = str(ks[0]), str(ks[-1])
  return {
      'spawn_steps': list(ks), 'alphas': list(ALPHAS),
      'num_steps': STEPS[size], 'num_batches': NUM_BATCHES,
      'channels': list(CHANNELS[size]), 'runs': rows, 'per_k': per_k,
      'last_vs_init': stats.compare(
          per_k[last]['train_barrier']['values'],
          per_k[first]['train_barrier']['values'], paired=True)}
