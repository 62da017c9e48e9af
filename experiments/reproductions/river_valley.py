r"""The river valley: WSD, cosine, WSD-S and WSM merges; the annealing law.

  python -m experiments.reproduce river_valley [--size=smoke|full] [--seeds=0,1,2,3,4]

Claims. Wen et al. ("Understanding Warmup-Stable-Decay Learning Rates: A
River Valley Loss Landscape Perspective", 2024): at a constant high rate the
loss stays up and drops sharply when the rate decays (the WSD signature); WSD
matches cosine at every budget; WSD-S (one run that decays at each budget and
resumes) does as well as separate WSD runs. Tian et al. (WSM, 2025): merging
the last window's constant-rate checkpoints with weights that emulate a decay
matches an actual decay. Tissue et al. (2024): the loss follows
``L0 + A S1^-alpha - C S2``, and two runs predict the others.

What runs, per seed (init, data order and held-out batches): the transformer,
data and AdamW of `configs/river_valley.py`. Every method replays the
library's `dynamics.step.train_step` on the same batches in a jitted
``lax.scan`` (`dynamics.replay.make_scan_train`) whose learning rate is a
table filled from a `dynamics.schedules` schedule (one compilation for all methods and seeds): constant (warmup, then
the peak up to the last budget); WSD linear / cosine / 1-sqrt, branches of the
constant run decaying over the last ``decay_fraction`` of each budget
(`schedules.wsd`, what ``--config.branch.*`` does); one warmup-cosine run per
budget; one `schedules.wsd_s` run; WSM uniform / 1-sqrt / cosine,
`dynamics.merging` merges of the constant run's checkpoints every
``merge.interval`` steps over the same last ``decay_fraction`` ('linear'
merges equal 'uniform'). Methods are compared over the seeds with
`results.compare` (within two standard errors: "within noise"); the annealing
law is fitted per seed on the constant run and linear WSD at the last budget
and predicts every other run's final loss.
"""

from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import annealing_law as law
from analysis import results
from analysis.results.river_valley import (CONSTANT, DECAY_SHAPES, METHODS,
                                           WSM_SHAPES, lr_tables)
from configs import river_valley as river_valley_config
from dynamics import data as data_lib
from dynamics import merging, runs
from dynamics import replay as replay_lib

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def config(size: str, seed: int = 0):
  """`configs/river_valley.py` (its smoke variant at smoke size), seeded."""
  c = river_valley_config.get_config('smoke' if size == 'smoke' else None)
  c.seed = int(seed)
  return c


def configs(size: str) -> Dict[str, Any]:
  """``{label: config record}`` of the runs, for the results file."""
  return {'river_valley': runs.config_record(config(size))}


def setup_of(c) -> Dict[str, Any]:
  """The schedule settings every curve is built from (kept in the JSON)."""
  budgets = [int(b) for b in c.schedule.budgets]
  every, interval = int(c.eval_every), int(c.merge.interval)
  decays = [int(round(c.schedule.decay_fraction * b)) for b in budgets]
  for b, d in zip(budgets, decays):  # Branch starts are evaluated.
    if (b - d) % every or b % interval or d % interval:
      raise ValueError(f'budget {b}, decay {d}: not multiples of eval_every='
                       f'{every} and merge.interval={interval}')
  return {'budgets': budgets, 'decay_steps': decays,
          'peak': float(c.optimizer.learning_rate),
          'warmup': int(c.schedule.warmup_steps),
          'decay_fraction': float(c.schedule.decay_fraction),
          'eval_every': every, 'merge_interval': interval}


def _train_seed(run, replay, held_out, log) -> Dict[str, Any]:
  """Every method of one seed: eval curves and final losses on ``held_out``."""
  setup = setup_of(run.config)
  budgets, every, last = setup['budgets'], setup['eval_every'], setup['budgets'][-1]
  batches = jax.tree.map(jnp.asarray,
                         replay_lib.stacked_batches(run.dataset, last))
  tables = {k: np.asarray(v, np.float32) for k, v in lr_tables(setup).items()}
  evaluate = lambda params, model_state: float(runs.evaluate(
      params, model_state, held_out, run.eval_step, run.config.eval_batches)['loss'])

  def train(key, state, start, stop, keep=()):
    steps, losses, kept, step = [], [], {}, start
    while step < stop:
      length = min(every - step % every, stop - step)
      state, _ = replay(state, jax.tree.map(lambda a: a[step:step + length],
                                            batches), tables[key])
      step += length
      steps.append(step)
      losses.append(evaluate(state.params, state.model_state))
      kept.update({step: state} if step in keep else {})
    log(f'  {key} from step {start}: eval loss {losses[-1]:.4f} at {stop}')
    return steps, losses, state, kept

  windows = {b: merging.window_steps(b, d, setup['merge_interval'])
             for b, d in zip(budgets, setup['decay_steps'])}
  starts = {b: b - d for b, d in zip(budgets, setup['decay_steps'])}
  state0 = run.init_state()
  keep = set(starts.values()).union(*windows.values())
  c_steps, c_losses, _, kept = train('constant', state0, 0, last, keep)
  curves = {'constant': (c_steps, c_losses)}
  at = dict(zip(c_steps, c_losses))
  final = {m: {} for m in METHODS}
  for shape in DECAY_SHAPES:
    for b in budgets:
      s, l, _, _ = train(f'wsd-{shape}-{b}', kept[starts[b]], starts[b], b)
      prefix = [t for t in c_steps if t <= starts[b]]
      curves[f'wsd-{shape}-{b}'] = (prefix + s, [at[t] for t in prefix] + l)
      final[f'WSD {shape}'][b] = l[-1]
  for b in budgets:
    s, l, _, _ = train(f'cosine-{b}', state0, 0, b)
    curves[f'cosine-{b}'] = (s, l)
    final['cosine'][b] = l[-1]
  s, l, _, _ = train('wsd_s', state0, 0, last)
  curves['wsd_s'] = (s, l)
  for b in budgets:
    final['WSD-S linear'][b] = l[s.index(b)]
    final[CONSTANT][b] = at[b]
    for shape in WSM_SHAPES:
      params = merging.merge_params((kept[t].params for t in windows[b]),
                                    merging.merge_weights(shape, len(windows[b])))
      final[f'WSM {shape}'][b] = evaluate(params, state0.model_state)
  log(f'seed {run.config.seed}: ' + ', '.join(f'{m} {final[m][last]:.4f}' for m in METHODS))
  return {'curves': curves, 'final': final, 'loss_floor':
          float(run.dataset.info.loss_floor)}


def fit_law(curves: Dict[str, Any], setup: Dict[str, Any]) -> Dict[str, Any]:
  """The law fitted on the constant run and linear WSD at the last budget;
  every curve's relative prediction error (``law.prediction_error``)."""
  tables, min_step = lr_tables(setup), 2 * setup['warmup']
  fit_on = ['constant', f"wsd-linear-{setup['budgets'][-1]}"]
  observed = {k: law.Curve(np.asarray(t)[np.asarray(t) >= min_step],
                           np.asarray(l)[np.asarray(t) >= min_step], tables[k], k)
              for k, (t, l) in curves.items()}
  params = law.fit([observed[k] for k in fit_on], min_step=min_step)
  errors = {k: law.prediction_error(params, c) for k, c in observed.items()}
  return {'fit_on': fit_on, 'min_step': min_step, 'params': params._asdict(),
          'errors': errors}


def summarize(per_seed: Sequence[Dict[str, Any]], setup: Dict[str, Any]
              ) -> Dict[str, Any]:
  """The JSON numbers from each seed's curves and final losses."""
  budgets, n = setup['budgets'], len(per_seed)
  ms = results.mean_std
  final = {m: {str(b): ms([s['final'][m][b] for s in per_seed]) for b in budgets}
           for m in METHODS}
  best = lambda prefix, b: min((final[m][str(b)]['mean'], m) for m in METHODS
                               if m.startswith(prefix))[1]
  comparisons = {k: {} for k in ('wsd_vs_cosine', 'wsds_vs_wsd',
                                 'wsm_vs_constant', 'wsm_vs_decay')}
  signature = {}
  for b, d in zip(budgets, setup['decay_steps']):
    wsd, wsm = best('WSD ', b), best('WSM ', b)
    for key, (m_a, m_b) in (('wsd_vs_cosine', (wsd, 'cosine')),
                            ('wsds_vs_wsd', ('WSD-S linear', 'WSD linear')),
                            ('wsm_vs_constant', (wsm, CONSTANT)),
                            ('wsm_vs_decay', (wsm, wsd))):
      comparisons[key][str(b)] = {'a_method': m_a, 'b_method': m_b, **results.compare(
          *([s['final'][m][b] for s in per_seed] for m in (m_a, m_b)))}
    const = [dict(zip(*s['curves']['constant'])) for s in per_seed]
    # The linear WSD branch's drop over its decay against the constant run's
    # over the same steps (same start and batches, only the rate differs).
    decay = [c[b - d] - s['final']['WSD linear'][b] for c, s in zip(const, per_seed)]
    stable = [c[b - d] - c[b] for c in const]
    signature[str(b)] = {'decay_steps': d, **results.compare(decay, stable)}
  fits = [fit_law(s['curves'], setup) for s in per_seed]
  held_out = [k for k in fits[0]['errors'] if k not in fits[0]['fit_on']]
  finals = [[f['errors'][k]['final_rel_error'] for k in held_out] for f in fits]
  worst = held_out[int(np.argmax(np.mean(finals, axis=0)))]
  curves = {k: {'steps': [int(t) for t in per_seed[0]['curves'][k][0]],
                'losses': [[round(float(x), 6) for x in s['curves'][k][1]]
                           for s in per_seed]}
            for k in per_seed[0]['curves']}
  return {
      'setup': {**setup, 'num_seeds': n, 'loss_floor': per_seed[0]['loss_floor']},
      'final': final, 'signature': signature, 'comparisons': comparisons,
      'law': {'fit_on': fits[0]['fit_on'], 'min_step': fits[0]['min_step'],
              'held_out': held_out, 'params': [f['params'] for f in fits],
              'final_rel_error': {k: ms([f['errors'][k]['final_rel_error']
                                         for f in fits]) for k in fits[0]['errors']},
              'held_out_mean': ms([np.mean(x) for x in finals]),
              'held_out_max': ms([np.max(x) for x in finals]), 'worst': worst},
      'curves': curves,
  }


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  """Every method at every budget for each seed; see the module docstring."""
  per_seed, replay, first = [], None, None
  # Every seed on the held-out batches of seed 0: the spread over seeds is
  # that of training (init, data order), not of the eval sample.
  held_out = data_lib.get_dataset(config(size, 0))
  for seed in seeds:
    log(f'river_valley: seed {seed} ({size})')
    handle = runs.Run(config(size, seed))
    if replay is None:
      replay, first = replay_lib.make_scan_train(handle, ()), handle
    # Only the seed differs, so the first seed's compilation serves them all.
    assert handle.model == first.model and handle.options == first.options
    per_seed.append(_train_seed(handle, replay, held_out, log))
  return summarize(per_seed, setup_of(config(size)))
