"""The river-valley reproduction read from its numbers: the methods, their
learning-rate tables, claims, README rows and figures
(`experiments.reproductions.river_valley` records them in
``results/river_valley.json``)."""

import functools
import json
import os
from typing import Any, Callable, Dict, List

import jax
import numpy as np

from analysis import annealing_law as law
from analysis import plots
from analysis import results
from dynamics import schedules


FIGURES = ('wsd_river_valley_signature.png', 'wsd_river_valley_final_loss.png',
           'wsd_river_valley_annealing_law.png')
DECAY_SHAPES = schedules.DECAY_SHAPES
WSM_SHAPES = ('uniform', '1-sqrt', 'cosine')
CONSTANT = 'constant (no decay)'
METHODS = (('cosine',) + tuple(f'WSD {s}' for s in DECAY_SHAPES)
           + ('WSD-S linear',) + tuple(f'WSM {s}' for s in WSM_SHAPES)
           + (CONSTANT,))
LAW_TOLERANCE = 0.01  # Held-out final losses predicted within 1% on average.


def schedules_of(setup: Dict[str, Any]) -> Dict[str, Callable]:
  """Curve key -> its `dynamics.schedules` schedule, for every trained run."""
  peak, warmup, f = setup['peak'], setup['warmup'], setup['decay_fraction']
  out = {'constant': schedules.constant(peak, warmup)}
  for shape in DECAY_SHAPES:
    for b in setup['budgets']:
      out[f'wsd-{shape}-{b}'] = schedules.wsd(peak, b, warmup, f, shape)
  for b in setup['budgets']:
    out[f'cosine-{b}'] = schedules.warmup_cosine(peak, b, warmup)
  out['wsd_s'] = schedules.wsd_s(peak, setup['budgets'], warmup, f, 'linear')
  return out


def lr_tables(setup: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """Curve key -> float64 learning rate of each update (``law.Curve.lrs``):
  ``schedule(0), ..., schedule(T - 1)`` with ``T`` the last budget."""
  return _lr_tables(json.dumps(setup, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _lr_tables(setup_json: str) -> Dict[str, np.ndarray]:
  setup = json.loads(setup_json)
  scheds = schedules_of(setup)
  # One compilation for all the schedules (op by op, each would compile ~10).
  tables = jax.jit(lambda t: {k: s(t) for k, s in scheds.items()})(
      np.arange(setup['budgets'][-1]))
  return {k: np.asarray(v, np.float64) for k, v in tables.items()}


def _diff(cmp: Dict[str, Any], a: str, b: str) -> str:
  """``'+0.0012 ± 0.0005 (cosine lower (p = 0.003, paired t, 5 seeds))'``:
  mean difference a - b ± its standard error, and the verdict of
  `analysis.stats` (`results.verdict`)."""
  verdict = results.verdict(cmp, f'{a} lower', f'{b} lower')
  return f"{cmp['difference']:+.4f} ± {cmp['stderr']:.4f} ({verdict})"


def _per_budget(numbers, key: str, a: str, b: str) -> str:
  # Budget order from the setup: the JSON's keys are sorted as strings.
  return '; '.join(f"{budget}: {_diff(numbers['comparisons'][key][str(budget)], a, b)}"
                   for budget in numbers['setup']['budgets'])


def _final(numbers, key: str):
  """``(final eval loss per seed, last step)`` of run ``key``'s curve."""
  c = numbers['curves'][key]
  return np.array([s[-1] for s in c['losses']], np.float64), c['steps'][-1]


def _constant_at(numbers, step: int) -> np.ndarray:
  """The constant-rate run's eval loss at ``step``, per seed."""
  c = numbers['curves']['constant']
  return np.array([s[c['steps'].index(step)] for s in c['losses']], np.float64)


def law_in_nats(numbers: Dict[str, Any]) -> Dict[str, Any]:
  r"""The annealing law's accuracy in nats, beside what it predicts and a
  trivial baseline; per seed, averaged over the held-out runs.

  * ``law``: :math:`|\hat L - L|` of the law's final-loss prediction
    (``final_rel_error`` times the final loss);
  * ``baseline``: the same for the trivial predictor "the constant-rate loss
    at the run's last step minus the decay gain of the run the law was
    fitted on" (``wsd-linear`` at the last budget);
  * ``gain``: the decay's gain over the constant rate at the run's last step
    (:math:`L_{const} - L`), the effect the law is meant to predict;
  * ``comparison``: `results.compare` of law minus baseline.
  """
  law, fit = numbers['law'], numbers['law']['fit_on']
  decayed = [k for k in fit if k != 'constant'][0]
  last, fit_step = _final(numbers, decayed)
  fitted_gain = _constant_at(numbers, fit_step) - last
  errors, base, gains = [], [], []
  for key in law['held_out']:
    final, step = _final(numbers, key)
    errors.append(np.asarray(law['final_rel_error'][key]['values']) * final)
    base.append(np.abs(_constant_at(numbers, step) - fitted_gain - final))
    gains.append(_constant_at(numbers, step) - final)
  per_seed = lambda x: [float(v) for v in np.mean(x, axis=0)]
  out = {'law': per_seed(errors), 'baseline': per_seed(base),
         'gain': per_seed(gains)}
  out['comparison'] = results.compare(out['law'], out['baseline'])
  return out


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """``{claim: holds}``, each read from the numbers (none typed), each
  comparison by its `analysis.stats` t-test (`results.test_word`)."""
  cmp, budgets = numbers['comparisons'], [str(b) for b in numbers['setup']['budgets']]
  verdicts = lambda key, bs=budgets: [results.test_word(cmp[key][b]) for b in bs]
  # "Matches or beats": a t-test ran (5 seeds) and did not find it worse.
  no_worse = lambda words: set(words) <= {'a lower', 'within noise'}
  return {
      'WSD signature: the eval loss drops more in each decay than at the '
      'constant rate over the same steps':
          all(results.test_word(v) == 'a higher'
              for v in numbers['signature'].values()),
      'the best WSD branch matches or beats cosine at every budget':
          no_worse(verdicts('wsd_vs_cosine')),
      'WSD-S matches or beats the linear WSD branch at the later budgets':
          no_worse(verdicts('wsds_vs_wsd', budgets[1:])),
      'the best WSM merge beats the constant-rate checkpoint at every budget':
          set(verdicts('wsm_vs_constant')) == {'a lower'},
      'the best WSM merge matches or beats an actual decay at every budget':
          no_worse(verdicts('wsm_vs_decay')),
      f'the annealing law predicts held-out final losses within '
      f'{LAW_TOLERANCE:.0%} on average':
          numbers['law']['held_out_mean']['mean'] < LAW_TOLERANCE,
      'the annealing law predicts final losses better than the trivial '
      'baseline (in nats, analysis.stats)':
          _law_beats_baseline(numbers),
  }


def _law_beats_baseline(numbers: Dict[str, Any]) -> bool:
  from analysis import stats  # pylint: disable=g-import-not-at-top
  nats = law_in_nats(numbers)
  return stats.compare(nats['law'], nats['baseline'],
                       paired=True)['verdict'] == 'a lower'


def readme_row(numbers: Dict[str, Any]) -> str:
  """The README's table rows, one per figure, every number from ``numbers``."""
  setup, law_n = numbers['setup'], numbers['law']
  budgets = '/'.join(str(b) for b in setup['budgets'])
  sig = [numbers['signature'][str(b)] for b in setup['budgets']]
  drops = lambda side: '/'.join(f"{v[side]['mean']:.3f}" for v in sig)
  err = lambda stats: f"{100 * stats['mean']:.2f}% ± {100 * stats['std']:.2f}%"
  return '\n'.join([
      '| ![WSD signature](docs/figures/wsd_river_valley_signature.png) | The '
      'river valley (`python -m experiments.reproduce river_valley`; '
      f"`configs/river_valley.py`, budgets {budgets} on the Markov language, "
      f"{setup['num_seeds']} seeds): in each linear WSD decay the eval loss "
      f"drops {drops('a')} nats (mean), against {drops('b')} for the constant "
      'rate over the same steps (' + '; '.join(
          f"{b}: " + results.verdict(v, 'the constant rate drops more',
                                     'the decay drops more')
          for b, v in zip(setup['budgets'], sig)) + '). Best WSD minus '
      'cosine, ± its standard '
      f"error: {_per_budget(numbers, 'wsd_vs_cosine', 'WSD', 'cosine')}. "
      'WSD-S minus the linear WSD branch: '
      f"{_per_budget(numbers, 'wsds_vs_wsd', 'WSD-S', 'WSD')}. |",
      '| ![final losses](docs/figures/wsd_river_valley_final_loss.png) | '
      f"Final eval loss per method and budget (mean ± std, {setup['num_seeds']} "
      'seeds). Best WSM merge minus the constant-rate checkpoint: '
      f"{_per_budget(numbers, 'wsm_vs_constant', 'WSM', 'constant')}; best "
      'WSM merge minus the best WSD decay: '
      f"{_per_budget(numbers, 'wsm_vs_decay', 'WSM', 'decay')}. |",
      '| ![annealing law](docs/figures/wsd_river_valley_annealing_law.png) | '
      'The LR-annealing loss law (Tissue et al., 2024), fitted per seed on the '
      f"constant run and linear WSD at {setup['budgets'][-1]}, predicts the "
      f"other {len(law_n['held_out'])} runs' final losses to "
      f"{err(law_n['held_out_mean'])} on average and "
      f"{err(law_n['held_out_max'])} at worst (largest: "
      f"{law_n['worst']}). " + _law_nats_sentence(numbers) + ' |'])


def _law_nats_sentence(numbers: Dict[str, Any]) -> str:
  nats = law_in_nats(numbers)
  c = nats['comparison']
  ms = lambda v: results.fmt_mean_std(results.mean_std(v))
  verdict = results.verdict(c, 'the law beats the baseline',
                            'the law does not beat the baseline')
  return (f"In nats (mean over those runs, ± std over seeds): the law's "
          f"error {ms(nats['law'])}, a trivial baseline's (the constant-rate "
          "loss minus the fitted decay's gain) "
          f"{ms(nats['baseline'])}, the decay gain to predict "
          f"{ms(nats['gain'])}; law minus baseline "
          f"{c['difference']:+.3f} ({verdict}).")


def _mean_curve(curve):
  losses = np.asarray(curve['losses'])
  std = losses.std(0, ddof=1) if len(losses) > 1 else np.zeros(losses.shape[1])
  return np.asarray(curve['steps']), losses.mean(0), std


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Draws `FIGURES` into ``figures_dir`` from the numbers alone; their paths."""
  os.makedirs(figures_dir, exist_ok=True)
  setup, curves = numbers['setup'], numbers['curves']
  budgets, last = setup['budgets'], setup['budgets'][-1]
  tables, paths = lr_tables(setup), [os.path.join(figures_dir, f) for f in FIGURES]

  fig, (ax,) = plots.figure(width=7.0, height=4.5)
  ax_lr = ax.twinx()  # The learning rates, dotted, on the right axis.
  for key, color in (('constant', 'k'), (f'wsd-linear-{last}', 'C0'),
                     (f'cosine-{last}', 'C1'), ('wsd_s', 'C2')):
    steps, mean, std = _mean_curve(curves[key])
    ax.plot(steps, mean, color=color, label=key)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    ax_lr.plot(np.arange(1, last + 1), tables[key], ':', color=color, lw=1)
  ax.set_ylim(top=float(np.percentile(_mean_curve(curves['constant'])[1], 90)))
  ax.set(xlabel='step', ylabel='eval loss (mean ± std over seeds)',
         title=f'Budget {last}: constant, WSD, cosine and WSD-S')
  ax_lr.set_ylabel('learning rate (dotted)')
  ax.legend(loc='lower left')
  plots.save(fig, paths[0])

  fig, (ax,) = plots.figure(width=7.0)
  for i, m in enumerate(METHODS):
    stats = [numbers['final'][m][str(b)] for b in budgets]
    ax.errorbar(budgets, [s['mean'] for s in stats], [s['std'] for s in stats],
                marker='o', capsize=3, label=m, ls='-' if i < 10 else '--')
  ax.set(xlabel='budget (steps)', ylabel='final eval loss',
         title='Final loss per method and budget (mean ± std over seeds)')
  ax.legend(fontsize=7, ncol=2)
  plots.save(fig, paths[1])

  fit = numbers['law']
  params, shown = law.LawParams(**fit['params'][0]), []
  for key in ('constant', f'wsd-linear-{last}', f'wsd-1-sqrt-{budgets[0]}',
              f'cosine-{last}', 'wsd_s'):
    steps, losses = np.asarray(curves[key]['steps']), np.asarray(curves[key]['losses'][0])
    keep = steps >= fit['min_step']
    shown.append(law.Curve(steps[keep], losses[keep], tables[key], key))
  fig, (ax,) = plots.figure(width=7.0, height=4.5)
  law.plot_fit(params, shown, fitted=fit['fit_on'], ax=ax)
  ax.set_ylim(top=float(np.percentile(shown[0].losses, 90)))
  plots.save(fig, paths[2])
  return paths
