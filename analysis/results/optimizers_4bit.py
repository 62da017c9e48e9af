"""The 4-bit optimizers reproduction read from its numbers: the notebook's
table, the conclusions, claims, README row and figure
(`experiments.reproductions.optimizers_4bit` records them in
``results/optimizers_4bit.json``)."""

import os
from typing import Any, Dict, List, Optional

import numpy as np

from analysis import plots
from analysis import results
from analysis import stats


FIGURES = ('optimizers_4bit.png',)
OPTIMIZERS = ('Adam', 'Stable-SPAM')
FORMATS = ('int4', 'fp4')


def formats_of(numbers: Dict[str, Any]) -> List[str]:
  """The formats a results file holds, in `FORMATS` order (INT4 first)."""
  return [f for f in FORMATS if f in numbers['summary']]


def optimizers_of(numbers: Dict[str, Any]) -> List[str]:
  """The optimizers a results file holds, in `OPTIMIZERS` order."""
  first = numbers['sweep'][formats_of(numbers)[0]]
  return [o for o in OPTIMIZERS if o in first]


def _rate(r: Optional[float]) -> str:
  return 'none' if r is None else f'{r:g}'


def diverged_runs(rec: Dict[str, Any]) -> List[bool]:
  """Per seed, whether a run of one rate's record diverged: a non-finite
  final eval loss, or a final train loss above its initial value (the first
  logged train loss, of the first seed: every seed starts within a few
  hundredths of a nat of log V, the uniform prediction). A stability
  criterion about stability -- not the "trained" cutoff (halfway to the loss
  floor), which a slow run misses without any instability.

  Example:
    >>> diverged_runs({'curve_seed0': [4.2, 3.0], 'eval_loss': [3.0, None, 4.3],
    ...                'final_train_loss': [3.0, 3.1, 4.3]})
    [False, True, True]
  """
  start = rec['curve_seed0'][0]
  return [ev is None or final is None or not np.isfinite(final) or final > start
          for ev, final in zip(rec['eval_loss'], rec['final_train_loss'])]


def diverged(numbers: Dict[str, Any], fmt: str, opt: str, key: str) -> List[bool]:
  """`diverged_runs` of optimizer ``opt`` in format ``fmt`` at rate ``key``."""
  return diverged_runs(numbers['sweep'][fmt][opt][key])


def largest_non_diverging_rate(numbers: Dict[str, Any], fmt: str,
                               opt: str) -> Optional[float]:
  """The largest rate of the grid at which no seed `diverged` (None if every
  rate diverged)."""
  ok = [r for r in numbers['learning_rates']
        if not any(diverged(numbers, fmt, opt, repr(float(r))))]
  return max(ok) if ok else None


def any_divergence(numbers: Dict[str, Any], fmt: Optional[str] = None) -> bool:
  """Whether any run of the sweep (of ``fmt``, or of every format) diverged."""
  return any(any(diverged(numbers, f, o, repr(float(r))))
             for f in ([fmt] if fmt else formats_of(numbers))
             for o in optimizers_of(numbers) for r in numbers['learning_rates'])


def adam_failure_rate(numbers: Dict[str, Any], fmt: str) -> Optional[str]:
  """The key of the smallest rate at which every Adam seed diverged (None if
  there is none): where the stability claim is tested. Chosen from Adam's
  runs alone, so the one test made there needs no correction for choosing.
  """
  return next((repr(float(r)) for r in numbers['learning_rates']
               if all(diverged(numbers, fmt, 'Adam', repr(float(r))))), None)


def divergence_comparison(numbers: Dict[str, Any],
                          fmt: str) -> Optional[Dict[str, Any]]:
  """Stable-SPAM's diverged seeds against Adam's at `adam_failure_rate`
  (Fisher's exact test; 'a lower': Stable-SPAM diverges less), or None."""
  key = adam_failure_rate(numbers, fmt)
  if key is None:
    return None
  spam, adam = (diverged(numbers, fmt, o, key) for o in OPTIMIZERS[::-1])
  return stats.compare_counts(sum(spam), len(spam), sum(adam), len(adam))


def spike_comparison(numbers: Dict[str, Any], fmt: str) -> Dict[str, Any]:
  """Loss spikes per seed summed over the grid, Stable-SPAM against Adam
  (paired t: the seeds share init and batches)."""
  keys = [repr(float(r)) for r in numbers['learning_rates']]
  spam, adam = (np.sum([numbers['sweep'][fmt][o][k]['spikes'] for k in keys],
                       axis=0).tolist() for o in OPTIMIZERS[::-1])
  return stats.compare(spam, adam, paired=True)


def loss_comparisons(numbers: Dict[str, Any],
                     fmt: str) -> Dict[str, Dict[str, Any]]:
  """Final eval loss, Stable-SPAM minus Adam, at every rate where both have
  finite losses: paired t-tests (`analysis.stats`), Holm-adjusted over those
  rates (one sentence reports the family). Keyed by rate."""
  comp = numbers['summary'][fmt]['comparisons']
  keys = [k for k in comp
          if np.all(np.isfinite(comp[k]['a']['values'] + comp[k]['b']['values']))]
  tested = [stats.compare(comp[k]['a']['values'], comp[k]['b']['values'],
                          paired=True) for k in keys]
  for c, k in zip(tested, keys):  # The stored counts, for the README check.
    c['n'] = min(comp[k]['a']['n'], comp[k]['b']['n'], key=int)
  return dict(zip(keys, stats.adjusted(tested)))


def best_shared_rate(numbers: Dict[str, Any], fmt: str) -> Optional[str]:
  """The rate key with the lowest mean Adam eval loss among those compared."""
  comp = numbers['summary'][fmt]['comparisons']
  adam = numbers['summary'][fmt]['Adam']['eval_loss']
  return min(comp, key=lambda k: adam[k]['mean']) if comp else None


def verdict(comparison: Dict[str, Any]) -> str:
  """'Stable-SPAM lower', 'Adam lower' or 'within noise' with test, n and p,
  or 'no verdict: ...' (`results.verdict` of Stable-SPAM minus Adam, through
  `analysis.stats`)."""
  return results.verdict(comparison, 'Stable-SPAM lower', 'Adam lower')


def _rate_at(numbers: Dict[str, Any], key: str) -> float:
  """The grid's rate whose key is ``key`` (the stored number, not the key's
  text: the README check ties it to ``numbers['learning_rates']``)."""
  return next(r for r in numbers['learning_rates'] if repr(float(r)) == key)


def _fraction(flags: List[bool]) -> str:
  return f'{sum(flags)}/{len(flags)}'


def format_summary(numbers: Dict[str, Any], fmt: str) -> str:
  """One sentence per format: stable rates, diverged seeds where they differ
  most, spikes, the final losses at the best rate and at every rate where
  the optimizers differ beyond noise (each verdict from `analysis.stats`)."""
  s, opts = numbers['summary'][fmt], optimizers_of(numbers)
  if any_divergence(numbers, fmt):
    stability = 'largest rate with no diverged seed ' + ', '.join(
        f'{o} {_rate(largest_non_diverging_rate(numbers, fmt, o))}'
        for o in opts)
    key = adam_failure_rate(numbers, fmt) if len(opts) == 2 else None
    if key is not None:
      c = divergence_comparison(numbers, fmt)
      stability += (
          f'; diverged seeds at LR {_rate_at(numbers, key):g}, the smallest '
          'rate at which every Adam seed diverged, ' + ' vs '.join(
              f'{o} {_fraction(diverged(numbers, fmt, o, key))}' for o in opts)
          + ' (' + stats.verdict(c, 'Stable-SPAM diverges less',
                                 'Adam diverges less') + ')')
  else:
    stability = 'no run diverged at any rate'
  text = f'{fmt.upper()}: {stability}; loss spikes per seed over the sweep '
  if len(opts) == 2:
    c = spike_comparison(numbers, fmt)
    text += (f"Adam {results.fmt_mean_std(c['b'], 1)} vs Stable-SPAM "
             f"{results.fmt_mean_std(c['a'], 1)} ("
             + stats.verdict(c, 'Stable-SPAM fewer', 'Adam fewer') + ')')
  else:
    text += ' vs '.join(str(s[o]['spikes_total']) for o in opts)
  best = best_shared_rate(numbers, fmt)
  tested = loss_comparisons(numbers, fmt)
  said = {k: stats.verdict(c, 'Stable-SPAM lower', 'Adam lower')
          for k, c in tested.items()}
  word = lambda k: said[k].split(' (')[0].split(':')[0]
  shown = [k for k in s['comparisons']
           if k == best or word(k) not in ('within noise', 'no verdict')]
  if shown:
    text += '; final eval loss Adam vs Stable-SPAM ' + ', '.join(
        f"at LR {_rate_at(numbers, k):g} "
        f"{results.fmt_mean_std(s['comparisons'][k]['b'])} "
        f"vs {results.fmt_mean_std(s['comparisons'][k]['a'])} "
        f"({said[k]})" for k in shown)
  others = [k for k in s['comparisons'] if k not in shown]
  if others and {word(k) for k in others} == {'within noise'}:
    text += ', within noise at the other rates with finite losses'
  elif others and {word(k) for k in others} == {'no verdict'}:
    text += ', no verdict at the other rates with finite losses'
  return text


def report_lines(numbers: Dict[str, Any]) -> List[str]:
  """The notebook's table (one line per format, optimizer and rate) and
  conclusions, every number formatted from ``numbers``."""
  lines = []
  for fmt in formats_of(numbers):
    for opt in optimizers_of(numbers):
      for r in numbers['learning_rates']:
        rec = numbers['sweep'][fmt][opt][repr(float(r))]
        ev = numbers['summary'][fmt][opt]['eval_loss'][repr(float(r))]
        loss = 'not finite' if ev is None else results.fmt_mean_std(ev)
        lines.append(
            f"{fmt.upper()} {opt:>11} LR {r:<5g} final eval loss {loss:>15}, "
            f"spikes per seed {'/'.join(str(x) for x in rec['spikes'])}, "
            f"trains {sum(rec['trained'])}/{len(rec['trained'])}")
  lines += [format_summary(numbers, f) + '.' for f in formats_of(numbers)]
  return lines


def readme_row(numbers: Dict[str, Any]) -> str:
  d, rates = numbers['definitions'], numbers['learning_rates']
  opts = optimizers_of(numbers)
  first = numbers['sweep'][formats_of(numbers)[0]][opts[0]]
  n_seeds = len(first[repr(float(rates[0]))]['spikes'])
  formats = ' / '.join(f.upper() for f in formats_of(numbers))
  found = claims(numbers)
  if not found:
    verdict_text = ''
  elif not any_divergence(numbers):
    verdict_text = ('. Divergence: a non-finite loss or a final loss above '
                    'the initial one; no instability at these rates: no '
                    'verdict on Stable-SPAM staying stable at larger rates '
                    'than Adam (the paper: 60M-1B parameters)')
  else:
    held = [f.upper() for f in formats_of(numbers)
            if found[f'{f}_stable_spam_diverges_less']]
    verdict_text = (
        '. Divergence: a non-finite loss or a final loss above the initial '
        "one. The paper's claim (Stable-SPAM stable where Adam diverges): "
        + ('reproduced' if found['stable_spam_stable_at_larger_lr'] else
           f"reproduced in {' and '.join(held)} only" if held else
           'not reproduced') + ' at this scale (the paper: 60M-1B parameters)')
  return ('| ![4-bit](docs/figures/optimizers_4bit.png) | '
          f"{' vs '.join(opts)} under fake {formats} training, peak learning "
          f"rates "
          f"{', '.join(_rate(r) for r in rates)}, {n_seeds} seed"
          f"{'s' if n_seeds > 1 else ''} each, "
          f"{d['num_steps']} steps of the {d['num_parameters'] / 1e3:.0f}k-"
          'parameter GPT (`python -m experiments.reproduce optimizers_4bit`). '
          + '. '.join(format_summary(numbers, f) for f in formats_of(numbers))
          + verdict_text + '. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """The paper's stability claim, per format and overall (none unless both
  optimizers ran). Per format: Stable-SPAM diverges in fewer seeds than Adam
  where every Adam seed diverged (`divergence_comparison`: Fisher exact,
  p < 0.05 with 5 seeds), and its `largest_non_diverging_rate` is the larger (false where
  nothing diverged: no instability, nothing shown); fewer loss spikes by
  `spike_comparison`. Overall: both hold in every format."""
  out = {}
  if optimizers_of(numbers) != list(OPTIMIZERS):
    return out
  for fmt in formats_of(numbers):
    a, b = (largest_non_diverging_rate(numbers, fmt, o) for o in OPTIMIZERS)
    if not any_divergence(numbers, fmt):
      a = b = None
    out[f'{fmt}_stable_spam_stable_at_larger_lr'] = (
        b is not None and (a is None or b > a))
    c = divergence_comparison(numbers, fmt)
    out[f'{fmt}_stable_spam_diverges_less'] = (
        c is not None and c['verdict'] == 'a lower')
    out[f'{fmt}_stable_spam_fewer_spikes'] = (
        spike_comparison(numbers, fmt)['verdict'] == 'a lower')
  out['stable_spam_stable_at_larger_lr'] = all(
      out[f'{f}_stable_spam_stable_at_larger_lr']
      and out[f'{f}_stable_spam_diverges_less'] for f in formats_of(numbers))
  return out


def edge_rate(numbers: Dict[str, Any]) -> float:
  """The largest rate of the grid at which some run (any optimizer, format
  or seed) trained: where stability is decided."""
  trained = [r for r in numbers['learning_rates']
             for f in formats_of(numbers) for o in optimizers_of(numbers)
             if any(numbers['sweep'][f][o][repr(float(r))]['trained'])]
  return max(trained) if trained else numbers['learning_rates'][0]


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Final eval loss and spikes vs learning rate; the first seed's train
  loss at the `edge_rate`."""
  rates = numbers['learning_rates']
  keys = [repr(float(r)) for r in rates]
  edge = edge_rate(numbers)
  fig, axes = plots.figure(3, width=4.6, height=3.6)
  styles = {'int4': '-', 'fp4': '--'}
  colors = {'Adam': 'tab:blue', 'Stable-SPAM': 'tab:red'}
  for fmt in formats_of(numbers):
    for opt in optimizers_of(numbers):
      s, sw = numbers['summary'][fmt][opt], numbers['sweep'][fmt][opt]
      label = f'{opt} {fmt}'
      mean = [np.nan if s['eval_loss'][k] is None else s['eval_loss'][k]['mean']
              for k in keys]
      std = [0.0 if s['eval_loss'][k] is None else s['eval_loss'][k]['std']
             for k in keys]
      axes[0].errorbar(rates, mean, yerr=std, fmt='o' + styles[fmt],
                       color=colors[opt], label=label, capsize=3)
      axes[1].plot(rates, [s['spikes_mean'][k] for k in keys],
                   'o' + styles[fmt], color=colors[opt], label=label)
      curve = np.array([np.nan if v is None else v
                        for v in sw[repr(float(edge))]['curve_seed0']])
      axes[2].plot(np.arange(1, len(curve) + 1), curve, styles[fmt],
                   color=colors[opt], lw=0.8, label=label)
  axes[0].set_title('final eval loss (mean ± std over seeds)')
  factor = numbers['definitions']['spike_factor']
  axes[1].set_title(f'loss spikes per run (> {factor}x running median)')
  axes[2].set_title(f'train loss at LR {edge:g} (first seed)')
  for ax in axes[:2]:
    ax.set_xscale('log')
    ax.set_xticks(rates, [f'{r:g}' for r in rates])
    ax.minorticks_off()
    ax.set_xlabel('peak learning rate')
  axes[2].set_xlabel('update')
  axes[0].set_ylabel('nats')
  for ax in axes:
    ax.legend(fontsize=7)
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
