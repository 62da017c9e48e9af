r"""Adam vs Stable-SPAM under fake 4-bit training: a learning-rate sweep.

  python -m experiments.reproduce optimizers_4bit [--size=smoke|full] [--seeds=0,1,2,3,4]

Claim. Huang et al. ("Stable-SPAM: How to Train in 4-Bit More Stably than
16-Bit Adam", 2025): with INT4 / FP4 weights and activations, Stable-SPAM
trains stably where Adam spikes or diverges. Stability is a property of the
learning rate, so it is measured where it can show: a factor-2 grid of peak
learning rates, for Adam and Stable-SPAM, in fake INT4 and FP4, over the seeds
(init, data order and held-out batches), extended by doubling until Adam
diverges in every run (`next_rate`). Per optimizer and format the record
holds, per rate and seed, the final eval and train losses, the loss spikes
and whether the run trained; `analysis.results.optimizers_4bit` reads from it
the verdicts, each from `analysis.stats`: diverged seeds at the smallest
rate where every Adam seed diverged (Fisher's exact test; that rate is
chosen from Adam's runs alone), spikes per seed over the sweep (paired t)
and final eval losses per rate (paired t).

What runs: `configs/stable_spam_4bit.py` (``:sweep`` at full size,
``:smoke_sweep`` at smoke size; ``:adam`` and ``:fp4`` select the optimizer
and format): the small GPT on the embedded Markov language, every linear
layer fake-quantized (`dynamics.quantization`), no gradient clipping, a
warmup-cosine schedule. Each (optimizer, format) compiles the library's
`dynamics.step.train_step` once in a ``lax.scan``
(`dynamics.replay.make_scan_train`) and replays it for every rate and seed;
the per-update train losses give the spikes. The smoke size checks this machinery on both optimizers in INT4 only.

Definitions (``numbers['definitions']`` records them):

* a *loss spike* is a maximal stretch of consecutive updates whose train loss
  exceeds ``SPIKE_FACTOR`` times the median of the previous ``SPIKE_WINDOW``
  losses (at least 5 of them), or is not finite (`spike_count`);
* a run *trains* when every loss is finite and its final train loss (the mean
  of the last ``FINAL_FRACTION`` of the updates) is below halfway from its
  first loss to the data's entropy floor; otherwise it *diverged or stalled*
  (`trains`). The largest stable rate is the largest rate of the grid at
  which every seed trains (`largest_stable_rate`);
* a run *diverged* when its final eval loss is not finite or its final train
  loss is above its first one (`analysis.results.optimizers_4bit.
  diverged_runs`): the stability criterion of the verdicts, which a slow
  run that merely stalls does not meet.
"""

from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import results
from analysis.results import optimizers_4bit as reading
from analysis.results.optimizers_4bit import FORMATS, OPTIMIZERS
from configs import stable_spam_4bit
from dynamics import replay, runs
from experiments.reproductions import common

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# What each size runs: the smoke size checks the machinery (divergence,
# spikes, the largest stable rate) on both optimizers in INT4 only.
FORMATS_AT = {'full': FORMATS, 'smoke': ('int4',)}
OPTIMIZERS_AT = {'full': OPTIMIZERS, 'smoke': OPTIMIZERS}
# Peak learning rates: a factor-2 grid from where the model trains best
# (full), doubled past its end until Adam diverges in every run (`next_rate`,
# at most MAX_RATES rates); at smoke size one that trains, one that stalls,
# one that blows up (Adam diverges there: no extension).
LEARNING_RATES = {'full': tuple(0.02 * 2 ** k for k in range(5)),
                  'smoke': (0.01, 1.0, 30.0)}
MAX_RATES = 12
SPIKE_FACTOR = 1.5
SPIKE_WINDOW = 20
FINAL_FRACTION = 0.05


def config(size: str, optimizer: str, fmt: str, seed: int = 0,
           learning_rate: Optional[float] = None):
  """`configs/stable_spam_4bit.py` for one optimizer, format and seed."""
  variants = [v for v, on in (('adam', optimizer == 'Adam'),
                              ('fp4', fmt == 'fp4'),
                              ('smoke_sweep' if size == 'smoke' else 'sweep',
                               True))
              if on]
  c = stable_spam_4bit.get_config(','.join(variants))
  c.seed = int(seed)
  if learning_rate is not None:
    c.optimizer.learning_rate = float(learning_rate)
  return c


def configs(size: str) -> Dict[str, Any]:
  return {f'{opt} {fmt}': runs.config_record(config(size, opt, fmt))
          for fmt in FORMATS_AT[size] for opt in OPTIMIZERS_AT[size]}


# -- the measurements ---------------------------------------------------------


def spike_count(losses: Sequence[float], factor: float = SPIKE_FACTOR,
                window: int = SPIKE_WINDOW) -> int:
  """Loss spikes: maximal stretches of updates ``t`` with a non-finite loss
  or ``loss[t] > factor * median(finite losses of t-window .. t-1)`` (only
  once at least 5 earlier losses exist).

  Example:
    >>> spike_count([3.0] * 30 + [5.0, 4.9] + [3.0] * 10 + [np.nan] * 3)
    2
  """
  x = np.asarray(losses, np.float64)
  flagged = ~np.isfinite(x)
  for t in range(5, len(x)):
    past = x[max(0, t - window):t]
    past = past[np.isfinite(past)]
    if np.isfinite(x[t]) and past.size and x[t] > factor * np.median(past):
      flagged[t] = True
  starts = flagged & ~np.concatenate([[False], flagged[:-1]])
  return int(starts.sum())


def trains(losses: Sequence[float], loss_floor: float,
           final_fraction: float = FINAL_FRACTION) -> bool:
  """Whether a run trained: every loss finite and the mean of the last
  ``final_fraction`` of them below ``(losses[0] + loss_floor) / 2``.

  Example:
    >>> trains([4.0, 3.0, 2.5, 2.4], loss_floor=2.0, final_fraction=0.25)
    True
    >>> trains([4.0, 3.9, 3.8, 3.7], loss_floor=2.0, final_fraction=0.25)
    False
  """
  x = np.asarray(losses, np.float64)
  if not np.all(np.isfinite(x)):
    return False
  tail = x[-max(1, int(round(final_fraction * len(x)))):]
  return bool(tail.mean() < (x[0] + loss_floor) / 2)


def largest_stable_rate(rates: Sequence[float],
                        trained: Sequence[Sequence[bool]]) -> Optional[float]:
  """The largest rate at which every seed trained (``trained[i]``: the
  seeds' verdicts at ``rates[i]``); None when no rate qualifies.

  Example:
    >>> largest_stable_rate([0.01, 0.02, 0.04], [[1, 1], [1, 1], [1, 0]])
    0.02
  """
  ok = [r for r, t in zip(rates, trained) if len(t) and all(t)]
  return max(ok) if ok else None


def _finite_or_none(x: float) -> Optional[float]:
  return float(x) if np.isfinite(x) else None


def next_rate(rates: Sequence[float], adam_diverged: Sequence[bool],
              max_rates: int = MAX_RATES) -> Optional[float]:
  """The rate to add to the grid, or None when it is complete: the grid is
  doubled past its last rate until every Adam run there (every format and
  seed: ``adam_diverged``) diverged, at most ``max_rates`` rates in all.

  Example:
    >>> next_rate([0.02, 0.04], [True, False])
    0.08
    >>> next_rate([0.02, 0.04], [True, True]) is None
    True
    >>> next_rate([0.02, 0.04], [False], max_rates=2) is None
    True
  """
  if all(adam_diverged) or len(rates) >= max_rates:
    return None
  return 2.0 * float(rates[-1])


class _Sweep:
  """One optimizer and format: `dynamics.step.train_step` compiled once in a
  ``lax.scan`` and replayed for every rate and seed."""

  def __init__(self, size: str, optimizer: str, fmt: str,
               seeds: Sequence[int]):
    self.size, self.optimizer, self.fmt = size, optimizer, fmt
    self.run0 = runs.Run(config(size, optimizer, fmt, seeds[0]))
    self.train = replay.make_scan_train(self.run0)
    self.seeds = {}
    for seed in seeds:
      run = self.run0 if seed == seeds[0] else runs.Run(
          config(size, optimizer, fmt, seed))
      self.seeds[seed] = (run, run.init_state(), jax.tree.map(
          jnp.asarray, replay.stacked_batches(run.dataset,
                                              run.config.num_steps)))

  def at(self, lr: float, log) -> Dict[str, Any]:
    """Every seed at peak rate ``lr``: one record of per-seed lists."""
    rec = {'eval_loss': [], 'final_train_loss': [], 'spikes': [],
           'trained': [], 'max_loss': [], 'curve_seed0': None}
    for seed, (run, state0, batches) in self.seeds.items():
      lrs = common.lr_table(config(self.size, self.optimizer, self.fmt, seed,
                                   lr))
      state, metrics = self.train(state0, batches, lrs)
      losses = np.asarray(jax.device_get(metrics['loss']), np.float64)
      ev = run.evaluate(state.params, state.model_state,
                        eval_fn=self.run0.eval_step)['loss']
      tail = losses[-max(1, int(round(FINAL_FRACTION * len(losses)))):]
      floor = float(run.dataset.info.loss_floor)
      rec['eval_loss'].append(_finite_or_none(ev))
      rec['final_train_loss'].append(_finite_or_none(tail.mean()))
      rec['spikes'].append(spike_count(losses))
      rec['trained'].append(trains(losses, floor))
      rec['max_loss'].append(_finite_or_none(np.nanmax(losses)) if np.any(
          np.isfinite(losses)) else None)
      if rec['curve_seed0'] is None:
        rec['curve_seed0'] = [_finite_or_none(v) for v in losses]
      log(f'{self.optimizer} {self.fmt} lr {lr:g} seed {seed}: eval {ev:.4f}, '
          f'{rec["spikes"][-1]} spikes, '
          f'{"trains" if rec["trained"][-1] else "diverged/stalled"}')
    return rec


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  """The sweep: rates x optimizers x formats x seeds, and its summary. The
  grid starts at ``LEARNING_RATES[size]`` and is extended by `next_rate`
  until Adam diverges in every run."""
  seeds = [int(s) for s in seeds]
  sweeps = {fmt: {opt: _Sweep(size, opt, fmt, seeds)
                  for opt in OPTIMIZERS_AT[size]} for fmt in FORMATS_AT[size]}
  sweep = {fmt: {opt: {} for opt in sweeps[fmt]} for fmt in sweeps}
  rates = []
  pending = list(LEARNING_RATES[size])
  while pending:
    lr = pending.pop(0)
    rates.append(lr)
    for fmt in sweeps:
      for opt in sweeps[fmt]:
        sweep[fmt][opt][repr(float(lr))] = sweeps[fmt][opt].at(lr, log)
    if not pending:
      more = next_rate(rates, [d for fmt in sweep for d in
                               reading.diverged_runs(
                                   sweep[fmt]['Adam'][repr(float(lr))])])
      pending += [more] if more is not None else []
  one = sweeps['int4'][OPTIMIZERS_AT[size][0]].run0
  c = one.config
  return summarize(sweep, rates, {
      'spike_factor': SPIKE_FACTOR, 'spike_window': SPIKE_WINDOW,
      'final_fraction': FINAL_FRACTION, 'num_steps': int(c.num_steps),
      'warmup_steps': int(c.schedule.warmup_steps), 'schedule': c.schedule.name,
      'num_parameters': int(sum(np.prod(p.shape) for p in jax.tree.leaves(
          one.abstract_state.params))),
      'loss_floor': float(one.dataset.info.loss_floor),
      'max_rates': MAX_RATES})


def summarize(sweep: Dict[str, Any], rates: Sequence[float],
              definitions: Dict[str, Any]) -> Dict[str, Any]:
  """Largest stable rates, spikes and final-loss comparisons of a sweep."""
  keys = [repr(float(r)) for r in rates]
  summary: Dict[str, Any] = {}
  for fmt in sweep:
    summary[fmt] = {}
    present = [o for o in OPTIMIZERS if o in sweep[fmt]]
    for opt in present:
      s = sweep[fmt][opt]
      summary[fmt][opt] = {
          'largest_stable_rate': largest_stable_rate(
              rates, [s[k]['trained'] for k in keys]),
          'spikes_total': int(sum(sum(s[k]['spikes']) for k in keys)),
          'spikes_mean': {k: float(np.mean(s[k]['spikes'])) for k in keys},
          'eval_loss': {k: (results.mean_std(s[k]['eval_loss'])
                            if None not in s[k]['eval_loss'] else None)
                        for k in keys}}
    summary[fmt]['comparisons'] = {}
    for k in keys if len(present) == 2 else ():
      a, b = (sweep[fmt][o][k]['eval_loss'] for o in OPTIMIZERS)
      if None not in a and None not in b:
        summary[fmt]['comparisons'][k] = results.compare(b, a)  # SPAM - Adam.
  return {'learning_rates': [float(r) for r in rates], 'definitions': definitions,
          'sweep': sweep, 'summary': summary}

