r"""The gradient noise scale and the critical batch size of a small GPT.

  python -m experiments.reproduce gradient_noise_scale [--size=smoke|full] [--seeds=0,1,2,3,4]

Claim (McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
Training", 2018, Sec. 2-3 and Fig. 4-5): the steps ``S`` and examples ``E``
needed to reach a loss trade off as :math:`S = S_\min (1 + B_\text{crit}/B)`,
:math:`E = E_\min (1 + B/B_\text{crit})`: doubling the batch halves the
steps below the critical batch size and buys nothing above it; the simple
noise scale :math:`B_\text{simple} = \mathrm{tr}\Sigma / |G|^2` measured at
the branch point predicts :math:`B_\text{crit}` (to within an order of
magnitude), and :math:`B_\text{simple}` grows as the loss falls.

What runs, per seed: `configs/wsd.py`'s smoke GPT (2 layers, width 32) on
its Markov language (vocabulary 32, 16 tokens per example), Adam at a
constant rate (no clipping, no weight decay), trained from its init at batch
``BASE_BATCH`` by `dynamics.replay.make_scan_train`; at each of the size's
``probe_steps`` the eval loss (``EVAL_BATCHES`` fixed held-out batches) and
:math:`B_\text{simple}` from ``GNS_BATCHES`` independent training batches of
``GNS_SMALL`` examples (`analysis.noise_scale.GradientNoiseProbe`, in
examples = sequences). From the last of them (the branch point) the run is
continued at each batch size ``B`` with each rate of a 3-point grid around
``BASE_RATE * sqrt(B / BASE_BATCH)`` (vmapped over the rates, one
compilation per ``B``, `dynamics.replay.scan_train` inside a scan over
evaluations), for ``examples / B`` updates (at least ``min_steps``); the
eval loss every ``max(2, 64 / B)`` updates gives the steps to each target
loss, the branch loss minus ``fraction`` of its gap to the entropy rate
(linear interpolation between evaluations; the best rate per ``B``). The
fit of :math:`S(B)` (`fit_critical_batch`: intercept :math:`S_\min`, slope
:math:`S_\min B_\text{crit}` in ``1/B``) gives :math:`B_\text{crit}` per
seed and target. Verdicts: `analysis.stats.compare` over seeds (paired t of
the logs: B_crit vs B_simple at the branch point; B_simple at the last vs
the first probe) and `analysis.stats.ratio_interval` (B_crit / B_simple).
B_simple assumes plain SGD (the paper's B_noise with the Hessian and Adam's
preconditioner is not measured): it is the cheap predictor the claim is
about.
"""

import functools
import math
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import noise_scale, stats
from analysis.results import gradient_noise_scale as reading
from configs import wsd
from dynamics import optim as optim_lib
from dynamics import parametrization, replay, runs

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
BASE_BATCH = 32
BASE_RATE = 3e-3
GNS_SMALL = 16
GNS_BATCHES = 8
EVAL_BATCHES = 4
SIZES = {
    'full': dict(batches=(16, 32, 64, 128, 256),
                 probe_steps=(20, 40, 60, 80, 100), examples=2560,
                 min_steps=32, fractions=(0.2, 0.4)),
    'smoke': dict(batches=(8, 64), probe_steps=(15, 30), examples=384,
                  min_steps=24, fractions=(0.3,)),
}
RATE_FACTORS = (0.5, 1.0, 2.0)


def config(size: str, batch_size: int = BASE_BATCH, seed: int = 0,
           learning_rate: float = BASE_RATE):
  """The smoke GPT of `configs/wsd.py` at ``batch_size``, Adam at a constant
  ``learning_rate`` (no clipping, no weight decay)."""
  c = wsd.smoke(wsd.get_config())
  c.name = f'gns_b{batch_size}'
  c.num_steps = branch_length(size, batch_size)['steps']
  c.data.batch_size = int(batch_size)
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = float(learning_rate)
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = None
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  c.seed = int(seed)
  return c


def configs(size: str) -> Dict[str, Any]:
  return {f'batch {b}': runs.config_record(config(size, b))
          for b in SIZES[size]['batches']}


def branch_length(size: str, batch_size: int) -> Dict[str, int]:
  """``{'steps', 'every'}``: the updates of the branch at ``batch_size``
  (``examples / B`` but at least ``min_steps``: small batches need more
  steps) and the updates between evaluations (``64 / B`` but at least 2).

  Example:
    >>> branch_length('full', 8), branch_length('full', 256)
    ({'steps': 320, 'every': 8}, {'steps': 32, 'every': 2})
  """
  p = SIZES[size]
  every = max(2, 64 // batch_size)
  steps = max(p['min_steps'], p['examples'] // batch_size)
  return {'steps': -(-steps // every) * every, 'every': every}


def rates(batch_size: int) -> List[float]:
  """The grid of rates tried at ``batch_size``: ``RATE_FACTORS`` around the
  square-root rule (Adam) from ``BASE_RATE`` at ``BASE_BATCH``.

  Example:
    >>> [round(r, 6) for r in rates(128)]
    [0.003, 0.006, 0.012]
  """
  centre = BASE_RATE * math.sqrt(batch_size / BASE_BATCH)
  return [centre * f for f in RATE_FACTORS]


def steps_to_target(steps: Sequence[float], losses: Sequence[float],
                    target: float) -> float:
  """The first step at which the piecewise-linear curve through
  ``(steps, losses)`` reaches ``target`` (inf if it never does).

  Example:
    >>> steps_to_target([0, 4, 8], [3.0, 2.5, 2.0], 2.25)
    6.0
    >>> steps_to_target([0, 4], [3.0, 2.8], 2.0)
    inf
  """
  s, l = np.asarray(steps, np.float64), np.asarray(losses, np.float64)
  for i in range(len(s)):
    if l[i] <= target:
      if i == 0:
        return float(s[0])
      return float(s[i - 1] + (s[i] - s[i - 1]) * (l[i - 1] - target)
                   / (l[i - 1] - l[i]))
  return math.inf


def fit_critical_batch(batches: Sequence[float], steps: Sequence[float]
                       ) -> Dict[str, float]:
  r"""Least squares of :math:`S = S_\min + S_\min B_\text{crit} / B` over the
  finite ``steps``, in relative error (weights :math:`1/S`: the small
  steps of large batches count as much as the many of small ones):
  ``{'s_min', 'e_min' (S_min B_crit), 'b_crit'}``.

  Example:
    >>> b = [16, 32, 64, 128]
    >>> r = fit_critical_batch(b, [10 * (1 + 50 / x) for x in b])
    >>> round(r['s_min'], 6), round(r['b_crit'], 6), round(r['e_min'], 6)
    (10.0, 50.0, 500.0)
  """
  b, s = np.asarray(batches, np.float64), np.asarray(steps, np.float64)
  ok = np.isfinite(s)
  if ok.sum() < 2:
    return {'s_min': math.nan, 'e_min': math.nan, 'b_crit': math.nan}
  slope, intercept = np.polyfit(1.0 / b[ok], s[ok], 1, w=1.0 / s[ok])
  return {'s_min': float(intercept), 'e_min': float(slope),
          'b_crit': float(slope / intercept) if intercept > 0 else math.inf}


def _mean_loss(run, params, model_state, eval_batches):
  """The mean loss over the stacked held-out ``eval_batches``."""
  loss = run.loss_fn(model_state)
  return jnp.mean(jax.lax.map(lambda b: loss(params, b), eval_batches))


def make_branch(run):
  """Jitted ``branch(state, batches_CT, eval_batches, rates_R) -> (R, C)``:
  from ``state``, ``C`` chunks of ``every`` updates of the run's
  `dynamics.step.train_step` (`dynamics.replay.scan_train`, Adam at the
  constant rate ``rates_R[r]``), the mean held-out loss after each chunk;
  vmapped over the ``R`` rates. One compilation per batch size serves every
  seed."""
  model, options = run.model, run.options
  optimizer_config = parametrization.optimizer_config(run.config)

  def one_rate(state, batches_ct, eval_batches, rate):
    schedule = lambda count: rate
    tx = optim_lib.build_optimizer(optimizer_config, schedule)

    def chunk(st, batches_t):
      st, _ = replay.scan_train(st, batches_t, model=model, tx=tx,
                                schedule=schedule, options=options,
                                metric_names=())
      return st, _mean_loss(run, st.params, st.model_state, eval_batches)

    return jax.lax.scan(chunk, state, batches_ct)[1]

  return jax.jit(jax.vmap(one_rate, in_axes=(None, None, None, 0)))


class _Compiled:
  """The compiled functions, shared by the seeds (built on first use)."""

  def __init__(self):
    self.branch, self.train, self.probe, self.loss = {}, None, None, None


def _stack(batches):
  return jax.tree.map(lambda *a: jnp.stack(a), *batches)


def _seed(size, seed, compiled, log):
  p = SIZES[size]
  base = runs.Run(config(size, BASE_BATCH, seed))
  state = base.init_state()
  eval_batches = _stack([jax.tree.map(jnp.asarray, b)
                         for b in base.probe_batches(EVAL_BATCHES)])
  if compiled.train is None:
    compiled.train = replay.make_scan_train(base)
    model_state = state.model_state
    compiled.probe = noise_scale.GradientNoiseProbe(
        1, num_batches=GNS_BATCHES,
        loss_fn=lambda w, b: base.loss_fn(model_state)(w, b))
    compiled.loss = jax.jit(functools.partial(_mean_loss, base))
  gns_run = runs.Run(config(size, GNS_SMALL, seed))
  evaluate = lambda st: float(compiled.loss(st.params, st.model_state,
                                            eval_batches))
  done, along = 0, []
  for step in p['probe_steps']:
    batches = jax.tree.map(jnp.asarray, replay.stacked_batches(
        base.dataset, step - done, start=done))
    state, _ = compiled.train(state, batches, np.full(step - done, BASE_RATE))
    done = step
    g = compiled.probe(state, gns_run)
    along.append({'step': step, 'eval_loss': evaluate(state),
                  'b_simple': g['gns_b_simple'],
                  'b_simple_stderr': g['gns_b_simple_stderr']})
    log(f"seed {seed} step {step}: eval {along[-1]['eval_loss']:.4f}, "
        f"B_simple {g['gns_b_simple']:.1f} ± {g['gns_b_simple_stderr']:.1f}")
  branch_loss = along[-1]['eval_loss']
  floor = float(base.dataset.info.loss_floor)
  targets = [branch_loss - f * (branch_loss - floor) for f in p['fractions']]
  curves, eval_steps = {}, {}
  for b in p['batches']:
    every, total = (branch_length(size, b)[k] for k in ('every', 'steps'))
    eval_steps[str(b)] = list(range(0, total + 1, every))
    run = runs.Run(config(size, b, seed))
    if b not in compiled.branch:
      compiled.branch[b] = make_branch(run)
    data = jax.tree.map(
        lambda a: jnp.asarray(a.reshape((total // every, every) + a.shape[1:])),
        replay.stacked_batches(run.dataset, total, start=done))
    losses = np.asarray(compiled.branch[b](
        state, data, eval_batches, jnp.asarray(rates(b), jnp.float32)))
    curves[str(b)] = {repr(lr): [branch_loss] + [float(x) for x in row]
                      for lr, row in zip(rates(b), losses)}
  fits = []
  for t in targets:
    best = {}
    for b in p['batches']:
      s = {lr: steps_to_target(eval_steps[str(b)], c, t)
           for lr, c in curves[str(b)].items()}
      lr = min(s, key=s.get)
      best[str(b)] = {'steps': s[lr] if np.isfinite(s[lr]) else None,
                      'rate': float(lr)}
    fit = fit_critical_batch(p['batches'], [
        math.inf if best[str(b)]['steps'] is None else best[str(b)]['steps']
        for b in p['batches']])
    fit = {k: v if np.isfinite(v) else None for k, v in fit.items()}
    fits.append({'target': t, 'best': best, **fit})  # None: no fit (JSON).
    log(f"seed {seed} target {t:.4f}: steps "
        f"{[best[str(b)]['steps'] for b in p['batches']]}, "
        f"B_crit {fit['b_crit']}")
  return {'seed': seed, 'along': along, 'branch_step': done,
          'branch_loss': branch_loss, 'loss_floor': floor,
          'eval_steps': eval_steps, 'curves': curves, 'targets': fits}


def _log_compare(a, b):
  return stats.compare(np.log(a), np.log(b), paired=True)


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  p = SIZES[size]
  compiled = _Compiled()
  per_seed = [_seed(size, int(s), compiled, log) for s in seeds]
  early = [r['along'][0]['b_simple'] for r in per_seed]
  late = [r['along'][-1]['b_simple'] for r in per_seed]
  per_target = []
  for i, f in enumerate(p['fractions']):
    crit = [r['targets'][i]['b_crit'] for r in per_seed]
    ok = [j for j, c in enumerate(crit) if c is not None and c > 0]
    entry = {'fraction': f, 'b_crit': stats.summary([crit[j] for j in ok])
             if ok else None, 'fitted_seeds': len(ok)}
    if ok:
      entry['b_crit_vs_b_simple'] = _log_compare([crit[j] for j in ok],
                                                 [late[j] for j in ok])
      entry['ratio'] = (stats.ratio_interval([crit[j] for j in ok],
                                             [late[j] for j in ok],
                                             paired=True)
                        if len(ok) > 1 else None)
    per_target.append(entry)
  numbers = {
      'batches': list(p['batches']), 'probe_steps': list(p['probe_steps']),
      'branch': {str(b): branch_length(size, b) for b in p['batches']},
      'fractions': list(p['fractions']), 'base_batch': BASE_BATCH,
      'base_rate': BASE_RATE, 'rate_factors': list(RATE_FACTORS),
      'gns_small': GNS_SMALL, 'gns_batches': GNS_BATCHES,
      'eval_batches': EVAL_BATCHES, 'per_seed': per_seed,
      'b_simple_early': stats.summary(early),
      'b_simple_late': stats.summary(late),
      'late_vs_early': _log_compare(late, early),
      'loss_early': stats.summary([r['along'][0]['eval_loss'] for r in per_seed]),
      'loss_late': stats.summary([r['along'][-1]['eval_loss'] for r in per_seed]),
      'per_target': per_target}
  if len(p['fractions']) > 1:
    numbers['b_crit_trend'] = reading.b_crit_trend(numbers)
  return numbers
