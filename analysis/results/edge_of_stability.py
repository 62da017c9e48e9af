"""The edge-of-stability reproduction read from its numbers: claims, README
rows, the notebook's lines and the figures.

The numbers are those `experiments.reproductions.edge_of_stability` records
(``results/edge_of_stability.json``); the curves are its
``numbers['curves']``: ``'<run label> seed=<seed>'`` -> step, sharpness,
training loss, trace.
"""

import os
from typing import Any, Dict, List, Mapping

from analysis import plots
from analysis import results


FIGURES = ('eos_gd_sharpness.png', 'eos_sam_sharpness.png', 'eos_sgd_trace.png')
GD_TOLERANCE = 0.10    # GD's last-third sharpness within 10% of 2/eta.
SAM_TOLERANCE = 0.05   # SAM's within 5% of the root of eta*l*(1+rho*l) = 2.
SGD_TRACE_RATIO = 0.8  # SGD's final trace at most 0.8x GD's.


def _every_seed(stats: Mapping[str, Any], ok) -> bool:
  return all(ok(v) for v in stats['values'])


def claims(numbers: Mapping[str, Any]) -> Dict[str, bool]:
  gd = list(numbers['gd'].values())
  sam = numbers['sam']['rhos'].values()
  sgd = numbers['sgd']
  return {
      'GD starts below 2/eta (every rate and seed)': all(
          _every_seed(g['initial'], lambda v, g=g: v < g['two_over_eta'])
          for g in gd),
      f'GD sharpness over the last third within {GD_TOLERANCE:.0%} of 2/eta '
      '(every rate and seed)': all(
          _every_seed(g['relative_error'], lambda v: abs(v) <= GD_TOLERANCE)
          for g in gd),
      f'unnormalized SAM sharpness within {SAM_TOLERANCE:.0%} of the root of '
      'eta*lambda*(1 + rho*lambda) = 2 (every rho and seed)': all(
          _every_seed(r['relative_error'], lambda v: abs(v) <= SAM_TOLERANCE)
          for r in sam),
      'SAM settles below GD at the same eta (every rho and seed)': all(
          max(r['last_third']['values'])
          < min(numbers['sam']['gd_last_third']['values']) for r in sam),
      f'small-batch SGD ends with a Hessian trace at most {SGD_TRACE_RATIO}x '
      "GD's (every seed)": _every_seed(sgd['trace_ratio'],
                                       lambda v: v <= SGD_TRACE_RATIO),
  }


def _pm(stats: Mapping[str, Any], digits: int) -> str:
  """``'19.89 ± 0.01'``, or just the value for one seed."""
  if stats['n'] == 1:
    return f"{stats['mean']:.{digits}f}"
  return results.fmt_mean_std(stats, digits)


def _verdict(comparison: Mapping[str, Any], lower: str, higher: str) -> str:
  """The verdict in words, through `analysis.stats` (`results.verdict`)."""
  return results.verdict(comparison, lower, higher)


def _seeds(numbers) -> str:
  n = len(numbers['seeds'])
  return f'{n} seed' + ('s, mean ± std' if n > 1 else '')


def readme_row(numbers: Mapping[str, Any]) -> str:
  s, gd, sam, sgd = (numbers['settings'], numbers['gd'], numbers['sam'],
                     numbers['sgd'])
  rates = list(gd)  # '0.1', ...: the rates as the results file keys them.
  gd_row = (
      '| ![edge of stability](docs/figures/eos_gd_sharpness.png) | Full-batch '
      f"GD on a {numbers['num_params']:,}-parameter MLP (`python -m "
      'experiments.reproduce edge_of_stability`, `configs/eos.py`, '
      f'{_seeds(numbers)}, {s["steps"]} steps): sharpness rises from '
      f"{_pm(gd[rates[0]]['initial'], 2)} and hovers at 2/eta; "
      'last-third means ' + ', '.join(_pm(gd[r]['last_third'], 3)
                                      for r in rates)
      + ' for eta = ' + ', '.join(rates) + ' against '
      + ', '.join(f"{gd[r]['two_over_eta']:.4g}" for r in rates) + '. |')
  rhos = list(sam['rhos'])
  verdicts = sorted({_verdict(sam['rhos'][r]['vs_gd'], 'lower beyond noise',
                              'higher beyond noise') for r in rhos})
  sam_row = (
      '| ![SAM](docs/figures/eos_sam_sharpness.png) | Unnormalized SAM '
      '(`optimizer.sam.normalize=False`, the library\'s `sam_gradient`) at '
      f"eta = {sam['rate']:g} settles where eta*lambda*(1 + rho*lambda) = 2: "
      f"rho = {', '.join(rhos)} predict "
      + ', '.join(f"{sam['rhos'][r]['predicted']:.2f}" for r in rhos)
      + ' and measure ' + ', '.join(_pm(sam['rhos'][r]['last_third'], 2)
                                    for r in rhos)
      + f" (last third), GD {_pm(sam['gd_last_third'], 2)}; SAM against GD: "
      + ' / '.join(verdicts) + '. |')
  trace = sgd['trace']
  relation = ('above' if trace['a']['mean'] > sgd['two_over_eta']
              else 'at or below')
  sgd_row = (
      '| ![SGD trace](docs/figures/eos_sgd_trace.png) | Small-batch SGD (batch '
      f"{s['sgd_batch']}, eta = {s['sgd_rate']:g}) ends with Hessian trace "
      f"{_pm(trace['a'], 1)} against full-batch GD's {_pm(trace['b'], 1)} "
      f"({_verdict(trace, 'lower beyond noise', 'higher beyond noise')}; "
      f"last third), {relation} 2/eta = {sgd['two_over_eta']:.4g}; SGD's "
      f"top eigenvalue ends at {_pm(sgd['sharpness'], 2)}, GD's at "
      f"{_pm(sgd['gd_sharpness'], 2)}. Wu & Su's bound (trace <= 2/eta) is "
      'not reproduced: it holds at global minima that are linearly stable '
      'for SGD (an interpolating fit at zero loss), and this run (batch '
      f"{s['sgd_batch']}, non-zero loss) is not at one. |")
  return '\n'.join([gd_row, sam_row, sgd_row])


def summary(numbers: Mapping[str, Any]) -> List[str]:
  """The notebook's conclusions: one line per result, verdicts computed."""
  s, gd, sam, sgd = (numbers['settings'], numbers['gd'], numbers['sam'],
                     numbers['sgd'])
  lines = []
  for rate, g in gd.items():
    lines.append(
        f"GD eta={rate}: sharpness {_pm(g['initial'], 2)} at init, peak "
        f"{_pm(g['peak'], 2)}, {_pm(g['last_third'], 3)} over the last third "
        f"(2/eta = {g['two_over_eta']:.4g}, relative error "
        f"{_pm(g['relative_error'], 4)}); final training loss "
        f"{g['final_loss']['mean']:.1e}")
  for rho, r in sam['rhos'].items():
    lines.append(
        f"SAM eta={sam['rate']:g} rho={rho}: predicted {r['predicted']:.2f}, "
        f"measured {_pm(r['last_third'], 2)} (relative error "
        f"{_pm(r['relative_error'], 4)}); against GD's "
        f"{_pm(sam['gd_last_third'], 2)}: "
        + _verdict(r['vs_gd'], 'lower beyond noise', 'higher beyond noise'))
  t = sgd['trace']
  lines.append(
      f"Hessian trace over the last third at eta={s['sgd_rate']:g}: SGD batch "
      f"{s['sgd_batch']} {_pm(t['a'], 1)}, GD {_pm(t['b'], 1)} "
      f"({_verdict(t, 'SGD lower beyond noise', 'SGD higher beyond noise')}; "
      f"ratio {_pm(sgd['trace_ratio'], 3)}); 2/eta = {sgd['two_over_eta']:.4g}, "
      f"which SGD's trace is {'above' if t['a']['mean'] > sgd['two_over_eta'] else 'at or below'}")
  lines.append(
      f"Top eigenvalue at eta={s['sgd_rate']:g}: SGD {_pm(sgd['sharpness'], 2)}, "
      f"GD {_pm(sgd['gd_sharpness'], 2)}")
  return lines + results.claim_lines(claims(numbers))


def plot(numbers: Mapping[str, Any], figures_dir: str) -> List[str]:
  """GD's sharpness and loss, SAM against GD, the Hessian traces of SGD and
  GD: the files `FIGURES` in ``figures_dir``, every seed drawn."""
  s, curves = numbers['settings'], numbers['curves']
  os.makedirs(figures_dir, exist_ok=True)
  seeds, colors = numbers['seeds'], ('C0', 'C1', 'C2', 'C3', 'C4')

  def each(label):
    return [(i, curves[f'{label} seed={seed}']) for i, seed in enumerate(seeds)]

  paths = []
  fig, (ax, ax_loss) = plots.figure(2)
  for (rate, g), color in zip(numbers['gd'].items(), colors):
    for i, c in each(f'gd eta={rate}'):
      kw = {'label': f'$\\eta$ = {rate}'} if i == 0 else {}
      ax.plot(c['step'], c['sharpness'], color=color, lw=1, alpha=0.8, **kw)
      ax_loss.semilogy(c['step'], c['loss'], color=color, lw=1, alpha=0.8, **kw)
    ax.axhline(g['two_over_eta'], color=color, ls='--', lw=1)
  ax.set(xlabel='step', ylabel=r'sharpness $\lambda_{\max}$',
         title='full-batch GD (dashed: $2/\\eta$)')
  ax_loss.set(xlabel='step', ylabel='training loss (MSE)', title='training loss')
  ax.legend()
  ax_loss.legend()
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[0])))

  fig, (ax,) = plots.figure(1, width=6.5)
  rate = numbers['sam']['rate']
  for i, c in each(f'gd eta={rate:g}'):
    ax.plot(c['step'], c['sharpness'], color='k', lw=1,
            **({'label': 'GD'} if i == 0 else {}))
  ax.axhline(2 / rate, color='k', ls='--', lw=1)
  for (rho, r), color in zip(numbers['sam']['rhos'].items(), colors):
    for i, c in each(f'sam eta={rate:g} rho={rho}'):
      ax.plot(c['step'], c['sharpness'], color=color, lw=1,
              **({'label': f'SAM $\\rho$ = {rho}'} if i == 0 else {}))
    ax.axhline(r['predicted'], color=color, ls='--', lw=1)
  ax.set(xlabel='step', ylabel=r'sharpness $\lambda_{\max}$',
         title=f'unnormalized SAM vs GD at $\\eta$ = {rate:g} '
               r'(dashed: $\eta\lambda(1+\rho\lambda)=2$)')
  ax.legend()
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[1])))

  fig, (ax,) = plots.figure(1, width=6.5)
  rate = s['sgd_rate']
  for label, name, color in ((f'gd eta={rate:g}', 'GD (full batch)', 'k'),
                             (f'sgd eta={rate:g} batch={s["sgd_batch"]}',
                              f'SGD, batch {s["sgd_batch"]}', 'C3')):
    for i, c in each(label):
      ax.plot(c['trace_step'], c['trace'], color=color, lw=1, marker='.',
              **({'label': name} if i == 0 else {}))
  ax.axhline(2 / rate, color='gray', ls='--', lw=1, label=r'$2/\eta$')
  ax.set(xlabel='step', ylim=(0, None),
         ylabel=r'$\mathrm{tr}\,\nabla^2 L$ (Hutchinson, '
                f'{s["trace_probes"]} probes)',
         title=f'Hessian trace of the training loss, $\\eta$ = {rate:g}')
  ax.legend()
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[2])))
  return paths
