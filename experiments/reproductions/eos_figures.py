"""The figures of the edge-of-stability reproduction, drawn from its numbers.

See `experiments.reproductions.edge_of_stability` (the curves are its
``numbers['curves']``: ``'<run label> seed=<seed>'`` -> step, sharpness,
training loss, trace).
"""

import os
from typing import Any, List, Mapping, Sequence

from analysis import plots


def plot(numbers: Mapping[str, Any], figures_dir: str,
         names: Sequence[str]) -> List[str]:
  """GD's sharpness and loss, SAM against GD, the Hessian traces of SGD and
  GD: the files ``names`` in ``figures_dir``, every seed drawn."""
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
  paths.append(plots.save(fig, os.path.join(figures_dir, names[0])))

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
  paths.append(plots.save(fig, os.path.join(figures_dir, names[1])))

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
  paths.append(plots.save(fig, os.path.join(figures_dir, names[2])))
  return paths
