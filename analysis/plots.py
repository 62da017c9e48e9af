"""Every figure the commands draw (the reproductions' are in `analysis.results`,
drawn with `figure` and `save` from here).

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`
with a ``FigureCanvasAgg``), never through ``pyplot``: importing this module
does not change the backend of a notebook, and no figure is left open in a
global registry. A plot function takes the JSON-able report a command wrote
and a path, so a figure can be redrawn from the JSON alone.

Example:
  >>> import os, tempfile
  >>> fig, (ax,) = figure()
  >>> _ = ax.plot([0, 1], [1, 0])
  >>> path = save(fig, os.path.join(tempfile.mkdtemp(), 'line.png'))
  >>> os.path.getsize(path) > 0
  True
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(ncols: int = 1, *, width: float = 5.5, height: float = 4.0
           ) -> Tuple[Figure, List[Axes]]:
  """A figure of ``ncols`` side-by-side axes, ``width`` x ``height`` each.

  Returns:
    ``(fig, axes)`` with ``axes`` a list of ``ncols`` axes.
  """
  fig = Figure(figsize=(width * ncols, height))
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def save(fig: Figure, path: str, *, dpi: int = 120) -> str:
  """Lays out ``fig`` and writes it to ``path`` (format from the suffix)."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  return path


# ---------------------------------------------------------------------------
# python -m analysis.hessian


def hessian_spectrum(result: Dict[str, Any], path: str) -> str:
  """Top eigenvalues (stem, symlog) and, if computed, the SLQ density.

  Args:
    result: what `analysis.hessian.checkpoint_spectrum` returns.
    path: the PNG to write.

  Example:
    >>> import os, tempfile
    >>> result = {'step': 3, 'eigenvalues': [4.0, 1.0, -0.5]}
    >>> path = hessian_spectrum(result, os.path.join(tempfile.mkdtemp(), 'h.png'))
  """
  has_density = 'density' in result
  fig, axes = figure(2 if has_density else 1)
  eig = np.asarray(result['eigenvalues'])
  ax = axes[0]
  ax.stem(np.arange(1, len(eig) + 1), eig)
  ax.set_yscale('symlog', linthresh=max(1e-3 * np.abs(eig).max(), 1e-12))
  ax.set(xlabel='index i', ylabel=r'$\lambda_i$ (symlog)',
         title=f"top-{len(eig)} Hessian eigenvalues, step {result['step']}")
  if has_density:
    d = result['density']
    grid, values = np.asarray(d['grid']), np.asarray(d['values'])
    ax = axes[1]
    ax.plot(grid, np.maximum(values, 1e-12))
    ax.set_xscale('symlog', linthresh=max(10 * d['sigma'], 1e-12))
    ax.set_yscale('log')
    ax.set_ylim(bottom=max(values.max() * 1e-8, 1e-12))
    ax.set(xlabel=r'$\lambda$ (symlog)', ylabel='density',
           title=f"SLQ density ({d['num_probes']} probes x "
                 f"{d['num_iters']} Lanczos steps)")
  return save(fig, path)


# ---------------------------------------------------------------------------
# python -m analysis.ntk


def ntk_report(report: Dict[str, Any], path: str) -> str:
  """Spectrum per step, alignment and distance over training, and the
  distance matrix between steps, side by side.

  Args:
    report: what `analysis.ntk.analyze_checkpoints` returns.
    path: the PNG to write.
  """
  fig, axes = figure(3, width=5.0, height=4.2)
  cmap = matplotlib.colormaps['viridis']
  n = len(report['steps'])
  for i, rec in enumerate(report['per_step']):
    eig = np.clip(np.asarray(rec['eigenvalues']), 1e-12, None)
    axes[0].loglog(np.arange(1, len(eig) + 1), eig,
                   color=cmap(i / max(n - 1, 1)), label=f"step {rec['step']}")
  axes[0].set(xlabel='rank', ylabel='eigenvalue', title='NTK spectrum')
  axes[0].legend(fontsize=7)
  steps = [r['step'] for r in report['per_step']]
  axes[1].plot(steps, [r['alignment'] for r in report['per_step']], 'o-',
               label='label alignment')
  axes[1].plot(steps, [r['distance_from_first'] for r in report['per_step']],
               's--', label='distance from first')
  axes[1].set(xlabel='step', title='alignment and kernel distance')
  axes[1].legend()
  im = axes[2].imshow(np.asarray(report['distance_matrix']), cmap='magma')
  axes[2].set_xticks(range(n), steps, rotation=45)
  axes[2].set_yticks(range(n), steps)
  axes[2].set_title('kernel distance between steps')
  fig.colorbar(im, ax=axes[2])
  return save(fig, path)


# ---------------------------------------------------------------------------
# python -m analysis.jacobian


def jacobian_spectrum(report: Dict[str, Any], path: str) -> str:
  """Sorted singular values with the bulk band, and the overlaps of the top
  Hessian eigenvectors with the bulk / amplified / contracted subspaces.

  Args:
    report: what `analysis.jacobian.analyze_run` returns.
    path: the PNG to write.
  """
  s = np.sort(np.asarray(report['singular_values']))[::-1]
  tol = report['split']['bulk_tol']
  fig, axes = figure(2)
  axes[0].semilogy(s, lw=1.5)
  axes[0].axhspan(1 - tol, 1 + tol, color='tab:green', alpha=0.3,
                  label=f"bulk |s-1|<={tol:g}: "
                        f"{report['split']['bulk_fraction']:.1%}")
  axes[0].set(xlabel='index', ylabel='singular value',
              title=f"training Jacobian ({report['num_params']} params)")
  axes[0].legend()
  ov = report['hessian']['overlap']
  idx = np.arange(len(report['hessian']['eigenvalues']))
  bottom = np.zeros(len(idx))
  for name, color in (('contracted', 'tab:blue'), ('bulk', 'tab:green'),
                      ('amplified', 'tab:red')):
    axes[1].bar(idx, ov[name], bottom=bottom, color=color, label=name)
    bottom += np.asarray(ov[name])
  axes[1].set(xlabel='Hessian eigenvector (by eigenvalue)', ylabel='overlap',
              title='top Hessian eigenvectors at the end')
  axes[1].legend()
  return save(fig, path)


# ---------------------------------------------------------------------------
# python -m experiments.sweep


def sweep_summary(rows: Sequence[Dict[str, Any]], path: str) -> str:
  """Final train and eval loss of every point of a sweep, side by side.

  Args:
    rows: per point, ``point`` (its name, ``'k=v,k=v'``), ``train_loss`` and
      ``eval_loss`` (None: not reached); `experiments.sweep.summary_rows`.
    path: the PNG to write.

  Example:
    >>> import os, tempfile
    >>> rows = [{'point': 'lr=0.1', 'train_loss': 2.5, 'eval_loss': 2.7},
    ...         {'point': 'lr=0.2', 'train_loss': None, 'eval_loss': None}]
    >>> path = sweep_summary(rows, os.path.join(tempfile.mkdtemp(), 's.png'))
  """
  fig, (ax,) = figure(width=max(4.0, 0.9 * len(rows) + 2), height=3.6)
  xs = range(len(rows))
  for key, offset in (('train_loss', -0.2), ('eval_loss', 0.2)):
    ys = [r[key] if r[key] is not None else float('nan') for r in rows]
    ax.bar([x + offset for x in xs], ys, width=0.4, label=f'final {key}')
  ax.set_xticks(list(xs))
  ax.set_xticklabels([r['point'].replace(',', '\n') for r in rows], fontsize=7)
  ax.set_ylabel('loss (nats)')
  ax.legend()
  return save(fig, path)


def optimizer_comparison(report: Dict[str, Any], path: str) -> str:
  """A fair-comparison report (`experiments.comparison.report`): the mean loss
  curve of each optimizer at its tuned setting (and untuned AdamW, dashed)
  with the target, and the tuning seed's final loss vs learning rate.

  Example:
    >>> import os, tempfile
    >>> curve = {'curve_steps': [1, 2], 'curve_mean': [3.0, 2.0]}
    >>> r = {'target': 2.5, 'optimizers': {'adamw': curve,
    ...      'adamw (untuned)': curve}, 'tuning': {'adamw': {'points': [
    ...      {'learning_rate': 0.1, 'weight_decay': None, 'final': 2.0}],
    ...      'best': {'learning_rate': 0.1, 'weight_decay': None}}}}
    >>> path = optimizer_comparison(r, os.path.join(tempfile.mkdtemp(), 'c.png'))
  """
  fig, (curves, rates) = figure(2, height=3.8)
  for name, e in report['optimizers'].items():
    curves.plot(e['curve_steps'], e['curve_mean'], label=name,
                linestyle='--' if 'untuned' in name else '-')
  curves.axhline(report['target'], color='gray', linewidth=0.8,
                 label='target')
  curves.set_xlabel('step')
  curves.set_ylabel('loss (nats, mean over seeds)')
  curves.legend(fontsize=8)
  for name, t in report['tuning'].items():
    for wd in sorted({p['weight_decay'] or 0.0 for p in t['points']}):
      pts = [p for p in t['points'] if (p['weight_decay'] or 0.0) == wd]
      ys = [p['final'] if np.isfinite(p['final']) else np.nan for p in pts]
      label = name if len({p['weight_decay'] for p in t['points']}) == 1 \
          else f'{name}, wd {wd:g}'
      rates.plot([p['learning_rate'] for p in pts], ys, 'o-', label=label)
  rates.set_xscale('log')
  rates.set_xlabel('peak learning rate')
  rates.set_ylabel('final eval loss (tuning seed)')
  rates.legend(fontsize=8)
  return save(fig, path)


# ---------------------------------------------------------------------------
# analysis.annealing_law


def loss_fit(series: Sequence[Dict[str, Any]], title: str = '',
             ax: Optional[Axes] = None) -> Axes:
  """Observed losses (dots) against a law's predictions (lines), one color
  per run (`analysis.annealing_law.plot_fit` draws its fits with it).

  Args:
    series: per run, a dict with ``steps`` and ``losses`` (observed),
      ``predicted_steps`` and ``predicted``, a ``label``, and ``fitted``
      (True: drawn solid, a run the law was fitted on; else dashed).
    title: the axes' title.
    ax: matplotlib axes (default: those of a new figure).

  Returns:
    The axes.

  Example:
    >>> ax = loss_fit([{'steps': [1, 2], 'losses': [1.0, 0.5],
    ...                 'predicted_steps': [1, 2], 'predicted': [1.0, 0.5],
    ...                 'label': 'run (fit)', 'fitted': True}])
    >>> [line.get_label() for line in ax.get_lines()][-1]
    'run (fit)'
  """
  if ax is None:
    _, (ax,) = figure(width=6.0)
  for i, run in enumerate(series):
    color = f'C{i % 10}'
    ax.plot(run['steps'], run['losses'], '.', color=color, ms=3, alpha=0.6)
    ax.plot(run['predicted_steps'], run['predicted'],
            '-' if run['fitted'] else '--', color=color, label=run['label'])
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return ax


# ---------------------------------------------------------------------------
# python -m analysis.landscape


def landscape_curve(report: Dict[str, Any], path: str) -> str:
  """Loss (and accuracy) along an interpolation or a 1-D slice.

  ``report``: `analysis.landscape.interpolate` output (``alphas``, ``train``
  and ``eval`` curves with their barriers) or `slice_1d` output (``xs``,
  ``loss``). The endpoints' chord is dashed, so the barrier is the largest
  gap above it.
  """
  if 'alphas' in report and 'train' in report:
    x, curves, label = report['alphas'], {k: report[k] for k in (
        'train', 'eval')}, r'$\alpha$'
  else:
    x, curves, label = report['xs'], {'': report}, 'x'
  ncols = 2 if any('accuracy' in c for c in curves.values()) else 1
  fig, axes = figure(ncols)
  for i, (name, c) in enumerate(curves.items()):
    title = f'{name} loss'.strip()
    if c.get('barrier') is not None:
      title += f" (barrier {c['barrier']:.3g})"
    axes[0].plot(x, c['loss'], 'o-', ms=3, color=f'C{i}', label=title)
    if label == r'$\alpha$' and 0.0 in x and 1.0 in x:
      l0, l1 = c['loss'][x.index(0.0)], c['loss'][x.index(1.0)]
      axes[0].plot([0, 1], [l0, l1], '--', color=f'C{i}', lw=0.8)
    if ncols == 2 and 'accuracy' in c:
      axes[1].plot(x, c['accuracy'], 'o-', ms=3, color=f'C{i}',
                   label=f'{name} accuracy'.strip())
  for ax in axes:
    ax.set_xlabel(label)
    ax.legend(fontsize=7)
  axes[0].set_ylabel('loss')
  return save(fig, path)


def landscape_surface(report: Dict[str, Any], path: str) -> str:
  """A 2-D slice: filled contours and the surface, side by side; the named
  points of ``report['points']`` (e.g. the three checkpoints of a plane)
  are marked."""
  xs, ys = np.asarray(report['xs']), np.asarray(report['ys'])
  z = np.asarray(report['loss'])
  fig = Figure(figsize=(11.0, 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 2, 1)
  filled = ax.contourf(xs, ys, z, levels=30, cmap='viridis')
  ax.contour(xs, ys, z, levels=15, colors='k', linewidths=0.4)
  fig.colorbar(filled, ax=ax, label='loss')
  for name, (px, py) in report.get('points', {}).items():
    ax.plot(px, py, 'w*', ms=10, mec='k')
    ax.annotate(name, (px, py), color='w', fontsize=8,
                xytext=(4, 4), textcoords='offset points')
  ax.set_xlabel('direction 1')
  ax.set_ylabel('direction 2')
  ax3 = fig.add_subplot(1, 2, 2, projection='3d')
  gx, gy = np.meshgrid(xs, ys)
  ax3.plot_surface(gx, gy, z, cmap='viridis', linewidth=0)
  ax3.set_zlabel('loss')
  return save(fig, path)
