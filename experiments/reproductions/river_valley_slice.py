r"""The landscape view of WSD: slices through a constant-rate checkpoint, its
decayed branch and its WSM merge.

  python -m experiments.reproduce river_valley_slice [--size=smoke|full] [--seeds=0,1,2,3,4]

Question (Wen et al., "Understanding Warmup-Stable-Decay Learning Rates: A
River Valley Loss Landscape Perspective", 2024; Tian et al., WSM, 2025): does
the decay move the iterate down to a valley floor that the constant-rate
iterate oscillates above, and does the WSM merge of the constant run's last
checkpoints land there too? Seen as: the held-out loss falls along the line
from the constant-rate checkpoint to the decayed branch without a barrier,
and rises again past the branch (a floor, not a slope).

What runs, per seed: `configs/wsd.py`'s transformer and Markov language
(its smoke variant at smoke size) at a constant rate after warmup,
`dynamics.train.train_and_evaluate`, keeping a checkpoint every
``INTERVAL`` steps; a WSD branch of it (``config.branch``: from step
``T - D``, linear decay over ``D`` steps to step ``T``); the WSM merge of the
constant run's checkpoints in the same last ``D`` steps with the weights
emulating a linear decay (`dynamics.merging.merge_checkpoints`,
``merge_weights('linear', n)``). Slices (`analysis.landscape`): the eval
loss on ``NUM_BATCHES`` held-out batches along the lines constant -> decayed
and constant -> merge at ``ALPHAS`` (``interpolate_params``, barrier by
Frankle et al.'s definition), and on a grid in the plane of the three
(``orthonormal_plane`` + ``slice_2d``, coordinates in parameter-norm units).
Verdicts: `analysis.stats.compare` (paired t over seeds).
"""

import os
import tempfile
from typing import Any, Dict, Sequence

from jax.flatten_util import ravel_pytree
import numpy as np

from analysis import landscape, stats
from configs import wsd
from dynamics import merging, runs, train

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
STEPS = {'full': 300, 'smoke': 100}       # T: the constant run's length.
DECAY = {'full': 60, 'smoke': 20}        # D: the branch's decay and WSM window.
INTERVAL = {'full': 15, 'smoke': 5}      # Checkpoints merged by WSM.
GRID = {'full': 11, 'smoke': 5}          # Points per side of the 2-D slice.
LEARNING_RATE = {'full': 1e-2, 'smoke': 1e-2}
ALPHAS = tuple(np.round(np.linspace(-0.5, 1.5, 9), 10))
NUM_BATCHES = 4


def config(size: str, seed: int = 0):
  """The constant-rate parent: `configs/wsd.py` with a constant schedule."""
  c = wsd.get_config('smoke')  # The small model; longer at full size.
  c.optimizer.learning_rate = LEARNING_RATE[size]
  c.name = 'river_valley_slice'
  c.num_steps = STEPS[size]
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = STEPS[size] // 8
  c.log_every = c.eval_every = c.num_steps
  c.checkpoint.every_steps = c.num_steps
  c.checkpoint.keep_steps = (STEPS[size] - DECAY[size],) + tuple(
      merging.window_steps(STEPS[size], DECAY[size], INTERVAL[size]))
  c.progress = False
  c.seed = seed
  return c


def branch_config(size: str, seed: int, parent_workdir: str):
  """The WSD branch: from step ``T - D``, linear decay over ``D`` steps."""
  c = config(size, seed)
  c.checkpoint.keep_steps = ()
  c.branch.from_workdir = parent_workdir
  c.branch.from_step = STEPS[size] - DECAY[size]
  c.branch.decay_steps = DECAY[size]
  return c


def configs(size: str) -> Dict[str, Any]:
  return {'constant': runs.config_record(config(size)),
          'decayed branch': runs.config_record(
              branch_config(size, 0, '<constant run>'))}


def _distance(a, b) -> float:
  return float(np.linalg.norm(ravel_pytree(a)[0] - ravel_pytree(b)[0]))


def _plane(loss_fn, points, batches, n) -> Dict[str, Any]:
  """The eval loss on an ``n x n`` grid of the plane of the three points,
  half the points' spread beyond them on each side."""
  centre, u1, u2, coords = landscape.orthonormal_plane(
      points['constant'], points['decayed'], points['wsm'])
  span = lambda v: np.linspace(v.min() - 0.5 * np.ptp(coords),
                               v.max() + 0.5 * np.ptp(coords), n)
  xs, ys = span(coords[:, 0]), span(coords[:, 1])
  plane = landscape.slice_2d(loss_fn, centre, u1, u2, xs, ys, batches)
  z = np.asarray(plane['loss'])
  i, j = np.unravel_index(np.argmin(z), z.shape)
  return {'xs': plane['xs'], 'ys': plane['ys'], 'loss': plane['loss'],
          'coords': coords.tolist(), 'grid_min': float(z[i, j]),
          'grid_min_at': [float(xs[j]), float(ys[i])]}


def _seed(size, seed, root, log) -> Dict[str, Any]:
  const_dir, branch_dir = (os.path.join(root, f'{n}_s{seed}')
                           for n in ('constant', 'decayed'))
  train.train_and_evaluate(config(size, seed), const_dir)
  train.train_and_evaluate(branch_config(size, seed, const_dir), branch_dir)
  const, branch = runs.Run.open(const_dir), runs.Run.open(branch_dir)
  steps = merging.window_steps(STEPS[size], DECAY[size], INTERVAL[size])
  points = {'constant': const.params(), 'decayed': branch.params(),
            'wsm': merging.merge_checkpoints(
                const, steps, merging.merge_weights('linear', len(steps)))}
  loss_fn = const.loss_fn()
  batches = [const.dataset.eval_batch(i) for i in range(NUM_BATCHES)]
  lines = {}
  for a, b in (('constant', 'decayed'), ('constant', 'wsm'),
               ('decayed', 'wsm')):
    r = landscape.interpolate_params(loss_fn, points[a], points[b], ALPHAS,
                                     batches)
    lines[f'{a}->{b}'] = {'loss': r['loss'], 'barrier': r['barrier']}
  dist = {k: _distance(points[a], points[b]) for k, (a, b) in (
      ('constant->decayed', ('constant', 'decayed')),
      ('constant->wsm', ('constant', 'wsm')),
      ('decayed->wsm', ('decayed', 'wsm')))}
  # Two points that coincide (a branch that did not move) span no plane.
  plane = (_plane(loss_fn, points, batches, GRID[size])
           if min(dist.values()) > 0 else None)
  end = {k: lines['constant->decayed']['loss'][ALPHAS.index(1.0)]
         if k == 'decayed' else
         lines['constant->wsm']['loss'][ALPHAS.index(1.0 if k == 'wsm' else
                                                    0.0)]
         for k in points}
  log(f'seed {seed}: eval loss constant {end["constant"]:.4f}, decayed '
      f'{end["decayed"]:.4f}, wsm {end["wsm"]:.4f}')
  return {'seed': seed, 'loss': end, 'lines': lines, 'distances': dist,
          'plane': plane}


def run(size: str, seeds: Sequence[int], log) -> Dict[str, Any]:
  with tempfile.TemporaryDirectory(prefix='river_valley_slice_') as root:
    rows = [_seed(size, s, root, log) for s in seeds]
  col = lambda f: [f(r) for r in rows]
  loss = {k: stats.summary(col(lambda r, k=k: r['loss'][k]))
          for k in ('constant', 'decayed', 'wsm')}
  barrier = {k: stats.summary(col(lambda r, k=k: r['lines'][k]['barrier']))
             for k in rows[0]['lines']}
  past = ALPHAS.index(1.5)
  return {
      'num_steps': STEPS[size], 'decay_steps': DECAY[size],
      'interval': INTERVAL[size], 'alphas': list(ALPHAS),
      'num_batches': NUM_BATCHES, 'runs': rows, 'loss': loss,
      'barrier': barrier,
      'rise_past_decayed': stats.summary(col(
          lambda r: r['lines']['constant->decayed']['loss'][past]
          - r['loss']['decayed'])),
      'decayed_vs_constant': stats.compare(
          loss['decayed']['values'], loss['constant']['values'], paired=True),
      'wsm_vs_constant': stats.compare(
          loss['wsm']['values'], loss['constant']['values'], paired=True)}
