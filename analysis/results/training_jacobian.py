"""The training-Jacobian reproduction read from its numbers: claims, README
row, the notebook's lines and the figures (`experiments.reproductions.
training_jacobian` records them in ``results/training_jacobian.json``)."""

import os
from typing import Any, Dict, List, Mapping

from analysis import plots
from analysis import results


FIGURES = ('training_jacobian_spectrum.png', 'training_jacobian_perturbation.png')
DATASETS = ('digits', 'white noise')
BULK_RATIO = 3.0         # Claim: digits' bulk fraction >= 3x white noise's.
PERTURBED = ('bulk', 'random', 'top')  # Kinds of perturbed directions.


def claims(numbers: Mapping[str, Any]) -> Dict[str, bool]:
  per_seed = numbers['perturbation']
  ordered = [b < r < t for b, r, t in zip(*(per_seed[k]['values']
                                            for k in PERTURBED))]
  return {
      f'bulk fraction on digits at least {BULK_RATIO:g}x white noise '
      '(every seed)': min(numbers['bulk_ratio']['values']) >= BULK_RATIO,
      'moving the init along non-trivial bulk directions changes the '
      'held-out outputs less than along random ones, along the top singular '
      'directions more (every seed)': all(ordered),
  }


def _pm(stats: Mapping[str, Any], fmt: str) -> str:
  value = format(stats['mean'], fmt)
  if stats['n'] == 1:
    return value
  return f"{value} ± {format(stats['std'], fmt)}"


def readme_row(numbers: Mapping[str, Any]) -> str:
  d, w, p = numbers['digits'], numbers['white noise'], numbers['perturbation']
  n, published = len(numbers['seeds']), numbers['published']
  seeds = f'{n} seed' + ('s, mean ± std' if n > 1 else '')
  order = list(claims(numbers).values())[1]
  return (
      '| ![training Jacobian](docs/figures/training_jacobian_spectrum.png) | '
      'Singular values of d theta_T / d theta_0 for the '
      f"{numbers['num_params']:,}-parameter MLP after {numbers['num_steps']} "
      "SGD steps in the reference's setting (`python -m experiments.reproduce "
      f"training_jacobian`, `configs/jacobian.py`, {seeds}): "
      f'{_pm(d["bulk_fraction"], ".1%")} lie within '
      f"{numbers['bulk_tol']:g} of 1 on digits, "
      f'{_pm(w["bulk_fraction"], ".1%")} on white noise (published re-runs: '
      f"~{published['digits']:.0%} and ~{published['white noise']:.0%}; of "
      'ours, '
      f"{_pm(d['trivial_fraction'], '.1%')} and "
      f"{_pm(w['trivial_fraction'], '.1%')} trivially: weights of never-lit "
      'pixels, softmax-invariant head shifts). Retraining from the init moved '
      f"by {p['epsilon']:g} changes the held-out logits by "
      f"{_pm(p['bulk'], '.1e')} along non-trivial bulk directions, "
      f"{_pm(p['random'], '.1e')} along random ones and "
      f"{_pm(p['top'], '.1e')} along the top singular directions ("
      + _order_words(order, n) + '). |')


def _order_words(order: bool, n: int) -> str:
  """The ordering in words; "as claimed" only with seeds enough for a
  verdict (`analysis.stats.MIN_N`): one run shows an order, not a finding."""
  from analysis import stats  # pylint: disable=g-import-not-at-top
  where = 'in this run' if n == 1 else 'in every seed'
  if n < stats.MIN_N:
    return (f'bulk < random < top {where}' if order else
            f'not bulk < random < top {where}') + ': no verdict, ' + (
                'one seed' if n == 1 else f'{n} seeds')
  return ('bulk < random < top, as claimed' if order else
          'not the claimed order bulk < random < top')


def summary(numbers: Mapping[str, Any]) -> List[str]:
  """The notebook's conclusions: one line per result, verdicts computed."""
  lines = []
  for d in DATASETS:
    r = numbers[d]
    lines.append(
        f"{d}: bulk {_pm(r['bulk_fraction'], '.1%')} (trivial "
        f"{_pm(r['trivial_fraction'], '.1%')}), amplified "
        f"{_pm(r['amplified_fraction'], '.1%')}, contracted "
        f"{_pm(r['contracted_fraction'], '.1%')}; singular values "
        f"{_pm(r['smallest'], '.1e')} to {_pm(r['largest'], '.3g')}; dense "
        f"Jacobian in {_pm(r['seconds_jacobian'], '.0f')} s")
  lines.append(f"digits / white noise bulk fraction: "
               f"{_pm(numbers['bulk_ratio'], '.2f')}")
  p = numbers['perturbation']
  lines.append(
      f"init moved by {p['epsilon']:g}: held-out outputs change by "
      + ', '.join(f"{_pm(p[k], '.1e')} ({k})" for k in PERTURBED)
      + f"; top / bulk {_pm(p['ratio'], '.1f')}")
  return lines + results.claim_lines(claims(numbers))


def plot(numbers: Mapping[str, Any], figures_dir: str) -> List[str]:
  """The spectra (first seed) and the perturbation bars (every seed)."""
  tol = numbers['bulk_tol']
  os.makedirs(figures_dir, exist_ok=True)
  fig, (ax,) = plots.figure(1, width=6)
  for d in DATASETS:
    ax.semilogy(numbers[d]['singular_values'],
                label=f"{d} (bulk {numbers[d]['bulk_fraction']['mean']:.0%})")
  ax.axhspan(1 - tol, 1 + tol, color='tab:green', alpha=0.3)
  ax.set(xlabel='index', ylabel=r'singular value of $d\theta_T/d\theta_0$',
         title=f"training Jacobian, {numbers['num_params']:,} parameters, "
               f"{numbers['num_steps']} SGD steps (seed {numbers['seeds'][0]})")
  ax.legend()
  paths = [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
  fig, (ax,) = plots.figure(1, width=4, height=3.5)
  p = numbers['perturbation']
  names = ('bulk', 'random', 'top')
  ax.bar(names, [p[n]['mean'] for n in names],
         color=['tab:green', 'tab:gray', 'tab:red'])
  for i, n in enumerate(names):
    ax.plot([i] * p[n]['n'], p[n]['values'], 'k.')
  ax.set(yscale='log', ylabel='relative output change',
         title=f"init moved by {p['epsilon']:g}")
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[1])))
  return paths
