r"""The fair-comparison harness's library (no flags): the learning-rate
search, steps to a target, paired speedups, the report, and `InProcess`, the
engine that trains in this process. `experiments.compare` is the command
(and its `experiments.sweep`-based engine); the reproductions use this.
"""

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

Setting = Tuple[float, Optional[float]]          # (learning rate, weight decay)
Curve = Dict[str, Any]                           # steps, loss, final
Engine = Callable[[str, Sequence[Tuple[float, Optional[float], int]]],
                  List[Curve]]
BASELINE = 'adamw'


class Pending(Exception):
  """A stage's runs were emitted as jobs; re-run once they are done."""


def log_grid(center: float, factor: float, n: int) -> List[float]:
  """``n`` rates a ``factor`` apart, centred (geometrically) on ``center``.

  Example:
    >>> log_grid(1e-3, 4.0, 3)
    [0.00025, 0.001, 0.004]
  """
  return [float(f'{center * factor ** (i - (n - 1) / 2):.6g}') for i in range(n)]


def steps_to(steps: Sequence[float], losses: Sequence[float],
             target: float) -> float:
  """First step where the curve reaches ``target`` (linear between points);
  ``inf`` if it never does.

  Example:
    >>> steps_to([10, 20, 30], [3.0, 2.0, 1.0], 1.5)
    25.0
  """
  prev = None
  for s, l in zip(steps, losses):
    if np.isfinite(l) and l <= target:
      if prev is None or prev[1] == l:
        return float(s)
      (s0, l0) = prev
      return float(s0 + (s - s0) * (l0 - target) / (l0 - l))
    prev = (s, l) if np.isfinite(l) else None
  return math.inf


def speedup_pairs(base: Sequence[Curve], other: Sequence[Curve]
                  ) -> Tuple[List[float], List[float]]:
  """Per seed ``(a_i, b_i)`` with ``a_i / b_i`` the speedup of ``other`` over
  ``base``: ``(base budget, other's steps to base's final loss)``, or when
  ``other`` never reaches it ``(base's steps to other's final loss, budget)``.
  """
  a, b = [], []
  for cb, co in zip(base, other):
    budget = float(cb['steps'][-1])
    s = steps_to(co['steps'], co['loss'], cb['loss'][-1])
    if np.isfinite(s):
      a.append(budget), b.append(max(s, 1.0))
    else:
      a.append(max(steps_to(cb['steps'], cb['loss'], co['loss'][-1]), 1.0)
               if np.isfinite(co['loss'][-1]) else 1.0)
      b.append(float(co['steps'][-1]))
  return a, b


def search(engine: Engine, name: str, base_lr: float,
           weight_decays: Sequence[Optional[float]], coarse_points: int,
           coarse_factor: float, tune_seed: int, max_extensions: int = 3
           ) -> Dict[str, Any]:
  """Coarse-then-refined learning-rate search of one optimizer.

  The coarse grid (per weight decay) is centred on ``base_lr``; while the
  best rate is at its edge, the grid grows by one coarse step that way (at
  most ``max_extensions`` times, stopping when the new rate is worse); then
  the rates half a coarse step (geometrically) either side of the best.

  Returns:
    ``{'points': [{'learning_rate', 'weight_decay', 'final'}], 'best':
    {'learning_rate', 'weight_decay', 'final'}}`` (a non-finite final loss
    ranks last).
  """
  points: Dict[Setting, float] = {}

  def evaluate(settings):
    todo = [s for s in settings if s not in points]
    for s, c in zip(todo, engine(name, [(lr, wd, tune_seed) for lr, wd in todo])):
      points[s] = c['final']

  rank = lambda s: points[s] if np.isfinite(points[s]) else math.inf
  evaluate([(lr, wd) for wd in weight_decays
            for lr in log_grid(base_lr, coarse_factor, coarse_points)])
  lr, wd = min(points, key=rank)
  for _ in range(max_extensions):  # A best rate at the grid's edge: go on.
    rates = sorted(r for r, w in points if w == wd)
    if lr not in (rates[0], rates[-1]):
      break
    step = coarse_factor if lr == rates[-1] else 1 / coarse_factor
    evaluate([(float(f'{lr * step:.6g}'), wd)])
    if min(points, key=rank) == (lr, wd):
      break
    lr, wd = min(points, key=rank)
  evaluate([(x, wd) for x in log_grid(lr, coarse_factor ** 0.5, 3)])
  best = min(points, key=rank)
  row = lambda s: {'learning_rate': s[0], 'weight_decay': s[1],
                   'final': points[s]}
  return {'points': [row(s) for s in sorted(points, key=lambda s: (
      s[1] or 0.0, s[0]))], 'best': row(best)}


def compare(engine: Engine, optimizers: Sequence[str], base_lr: float,
            seeds: Sequence[int], *, weight_decays=(None,), coarse_points=5,
            coarse_factor=4.0, tune_seed=0, target=None,
            log=print) -> Dict[str, Any]:
  """The search, the seeds and `report`: the whole comparison."""
  names = [BASELINE] + [o for o in optimizers if o != BASELINE]
  tuning, curves = {}, {}
  for name in names:
    tuning[name] = search(engine, name, base_lr, weight_decays, coarse_points,
                          coarse_factor, tune_seed)
    b = tuning[name]['best']
    log(f'[compare] {name}: best learning rate {b["learning_rate"]:g} '
        f'(weight decay {b["weight_decay"]}), tuning loss {b["final"]:.4f}')
  for name in names:
    b = tuning[name]['best']
    curves[name] = engine(name, [(b['learning_rate'], b['weight_decay'], s)
                                 for s in seeds])
  curves['adamw (untuned)'] = engine(BASELINE, [(base_lr, weight_decays[0], s)
                                                for s in seeds])
  return report(tuning, curves, target, base_lr)


def report(tuning: Dict[str, Any], curves: Dict[str, List[Curve]],
           target: Optional[float], base_lr: float) -> Dict[str, Any]:
  """Every number and verdict of a comparison (JSON-able).

  Args:
    tuning: per optimizer, `search`'s result.
    curves: per optimizer (and ``'adamw (untuned)'``), one curve per seed
      (the same seeds in the same order everywhere: the tests are paired).
    target: the target loss (None: tuned AdamW's mean final loss).
    base_lr: the config's (untuned) rate.
  """
  from analysis import stats  # pylint: disable=g-import-not-at-top
  finals = {k: [c['loss'][-1] for c in v] for k, v in curves.items()}
  if target is None:
    target = float(np.mean(finals[BASELINE]))
  untuned = 'adamw (untuned)'
  out = {'target': target, 'base_learning_rate': base_lr, 'tuning': tuning,
         'optimizers': {}}
  for name, cs in curves.items():
    steps = [steps_to(c['steps'], c['loss'], target) for c in cs]
    entry = {
        'final': stats.summary(finals[name]),
        'reaches_target': stats.reaches_target(finals[name], target),
        'steps_to_target': [s if np.isfinite(s) else None for s in steps],
        'curve_steps': [float(x) for x in cs[0]['steps']],
        'curve_mean': [float(x) for x in np.mean([c['loss'] for c in cs], 0)],
    }
    if name != BASELINE:
      c = stats.compare(finals[name], finals[BASELINE], paired=True)
      entry['final_vs_tuned_adamw'] = dict(
          c, words=stats.verdict(c, f'{name} lower', 'tuned adamw lower'))
    for key, base in (('speedup_vs_tuned_adamw', BASELINE),
                      ('speedup_vs_untuned_adamw', untuned)):
      a, b = speedup_pairs(curves[base], cs)
      entry[key] = dict(stats.ratio_interval(a, b, paired=True),
                        per_seed=[x / y for x, y in zip(a, b)])
    out['optimizers'][name] = entry
  return out


# ---------------------------------------------------------------------------
# Engines: how a list of (learning rate, weight decay, seed) gets its curves.


def overrides(name: str, lr: float, wd: Optional[float], seed: int
              ) -> Dict[str, Any]:
  """The config fields of one run: ``{'optimizer.name': ..., ...}``."""
  out = {'optimizer.name': name, 'optimizer.learning_rate': lr, 'seed': seed}
  if wd is not None:
    out['optimizer.weight_decay'] = wd
  return out


class InProcess:
  """Runs each setting in this process: one compiled ``lax.scan`` of the
  library's train step per (optimizer, weight decay), replayed for every rate
  and seed (`dynamics.replay.make_scan_train`). The curve is the mean train
  loss over windows of ``num_steps / points`` steps, and ``final`` the eval
  loss of the final parameters (the curve's last point too)."""

  def __init__(self, config: Any, points: int = 20):
    self.config, self.points, self._compiled = config, points, {}

  def __call__(self, name, settings):
    return [self._one(name, *s) for s in settings]

  def _one(self, name, lr, wd, seed):
    import jax  # pylint: disable=g-import-not-at-top
    from dynamics import replay, runs  # pylint: disable=g-import-not-at-top
    from experiments.reproductions import common  # pylint: disable=g-import-not-at-top
    c = copy.deepcopy(self.config)
    for key, value in overrides(name, lr, wd, seed).items():
      *path, leaf = key.split('.')
      node = c
      for p in path:
        node = node[p]
      node[leaf] = value
    if (name, wd) not in self._compiled:
      run0 = runs.Run(c)
      self._compiled[name, wd] = (run0, replay.make_scan_train(run0))
    run0, train = self._compiled[name, wd]
    run = runs.Run(c)
    T = int(c.num_steps)
    batches = jax.tree.map(jax.numpy.asarray,
                           replay.stacked_batches(run.dataset, T))
    state, m = train(run.init_state(), batches, common.lr_table(c))
    final = float(run.evaluate(state.params, state.model_state,
                               eval_fn=run0.eval_step)['loss'])
    loss = np.asarray(m['loss'], np.float64)
    w = max(1, T // self.points)
    ends = list(range(w, T + 1, w))
    curve = [float(loss[e - w:e].mean()) for e in ends]
    curve[-1] = final if np.isfinite(final) else math.inf
    return {'steps': ends, 'loss': curve, 'final': curve[-1]}
