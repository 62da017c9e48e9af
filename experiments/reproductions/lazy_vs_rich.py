r"""Lazy vs rich training, seen through the NTK: output scale alpha and width.

  python -m experiments.reproduce lazy_vs_rich [--size=smoke|full] [--seeds=0,1,2]

Claims. Chizat, Oyallon & Bach ("On Lazy Training in Differentiable
Programming", 2019): train the centered model
:math:`f = \alpha (g(x; \theta) - g(x; \theta_0))` on the loss divided by
:math:`\alpha^2`; as :math:`\alpha` grows training turns *lazy*: the
parameters and the tangent kernel barely move (relative change
:math:`\propto 1/\alpha`) and the model stays its linearization; small
:math:`\alpha` is *rich*: the kernel moves and aligns with the labels.
Jacot et al. (2018) and Lee et al. (2019): at fixed :math:`\alpha` the kernel
moves less as the width grows (the NTK parametrization; the standard one with
a learning rate :math:`\propto 1/\text{width}` too).

What runs, per seed (init, data order): `configs/lazy_rich.py`, a
one-hidden-layer ReLU MLP on a teacher-student regression, with the library's
own knobs: ``model.output_scale`` (alpha), ``model.antisymmetric_init`` (their
symmetrized init: the output is 0 at init, so ``alpha * g`` is the centered
model), the SGD rate scaled by :math:`1/\alpha^2` (the loss scaling, for SGD),
and ``model.parametrization`` ('standard' or 'ntk'). Each run is
`dynamics.train.train_and_evaluate` with the NTK probe
(`analysis.probes.NTKProbe`) at the first and the last step: kernel distance
from init (`analysis.ntk.kernel_distance`), centered kernel-label alignment,
on held-out probe examples; the relative parameter change is
`analysis.ntk.relative_param_change` between the step-0 checkpoint and the
final parameters.
"""

import os
import tempfile
from typing import Any, Dict, List, Sequence

import numpy as np

from analysis import ntk as ntk_lib
from analysis import plots
from analysis import probes
from configs import lazy_rich
from dynamics import metrics, runs, train
from experiments.reproductions import common

FIGURES = ('lazy_vs_rich_alpha.png', 'lazy_vs_rich_width.png')
DEFAULT_SEEDS = (0, 1, 2)
ALPHAS = {'full': (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0), 'smoke': (0.1, 10.0)}
WIDTHS = {'full': (64, 256, 1024, 4096), 'smoke': ()}
WIDTH_ALPHA = 1.0
PARAMETRIZATIONS = ('standard', 'ntk')
LABELS = {'standard': 'standard', 'ntk': 'NTK'}
FACTOR = 10.0  # "Falls at least 10x": kernel distance, smallest to largest.
METRICS = ('kernel_distance', 'param_change', 'alignment_init',
           'alignment_final', 'alignment_gain', 'eval_loss')


def variant(size: str, alpha: float, width=None, parametrization='standard'):
  """The ``configs/lazy_rich.py`` variant string of one run."""
  parts = ['smoke'] if size == 'smoke' else []
  parts.append(f'alpha={alpha:g}')
  if width is not None:
    parts.append(f'width={width}')
  if parametrization == 'ntk':
    parts.append('ntk')
  return ','.join(parts)


def config(arg: str, seed: int = 0):
  """A run's config: NTK probe at the first and last step, init checkpointed."""
  c = lazy_rich.get_config(arg)
  c.seed = int(seed)
  c.progress = False
  c.analysis.ntk_every = c.num_steps
  c.checkpoint.keep_steps = (0,)
  return c


def configs(size: str) -> Dict[str, Any]:
  """``{label: config record}`` of the runs, for the results file."""
  out = {f'alpha={a:g}': common.config_record(config(variant(size, a)))
         for a in ALPHAS[size]}
  for p in PARAMETRIZATIONS:
    for w in WIDTHS[size]:
      arg = variant(size, WIDTH_ALPHA, w, p)
      out[arg] = common.config_record(config(arg))
  return out


def measure(c, workdir: str) -> Dict[str, float]:
  """Trains ``c`` into ``workdir``; the NTK and parameter movement."""
  state = train.train_and_evaluate(c, workdir, probes=probes.from_config(c))
  lines = list(metrics.read_metrics(workdir))
  at = lambda step, key: next(m[key] for m in lines
                              if m['step'] == step and key in m)
  last = c.num_steps
  params_0 = runs.Run.open(workdir).params(0)
  return {
      'kernel_distance': at(last, 'ntk_distance_init'),
      'param_change': float(ntk_lib.relative_param_change(params_0, state.params)),
      'alignment_init': at(0, 'ntk_alignment'),
      'alignment_final': at(last, 'ntk_alignment'),
      'alignment_gain': at(last, 'ntk_alignment') - at(0, 'ntk_alignment'),
      'eval_loss': at(last, 'eval_loss'),
  }


def _sweep(args: Sequence[str], seeds: Sequence[int], log) -> List[Dict[str, Any]]:
  """Per variant string, each metric's `common.mean_std` over the seeds."""
  out = []
  with tempfile.TemporaryDirectory(prefix='lazy_vs_rich_') as root:
    for arg in args:
      per_seed = []
      for seed in seeds:
        workdir = os.path.join(root, f'{arg}_seed{seed}')
        per_seed.append(measure(config(arg, seed), workdir))
        log(f'{arg} seed {seed}: ' + ', '.join(
            f'{k} {v:.3g}' for k, v in per_seed[-1].items()))
      out.append({k: common.mean_std([r[k] for r in per_seed]) for k in METRICS})
  return out


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  """The alpha sweep, then the width sweep under each parametrization."""
  alphas = ALPHAS[size]
  rows = _sweep([variant(size, a) for a in alphas], seeds, log)
  numbers = {'alpha': {'alphas': list(alphas), 'width': config(
      variant(size, alphas[0])).model.hidden_sizes[-1], **{
          k: [r[k] for r in rows] for k in METRICS}}, 'width': {}}
  for p in PARAMETRIZATIONS:
    widths = WIDTHS[size]
    if widths:
      rows = _sweep([variant(size, WIDTH_ALPHA, w, p) for w in widths], seeds, log)
      numbers['width'][p] = {'widths': list(widths), 'alpha': WIDTH_ALPHA, **{
          k: [r[k] for r in rows] for k in METRICS}}
  numbers['num_seeds'] = len(seeds)
  numbers['num_steps'] = config(variant(size, alphas[0])).num_steps
  return numbers


def _width_sweeps(numbers: Dict[str, Any]) -> List[Any]:
  """``[(parametrization, sweep)]`` in `PARAMETRIZATIONS` order (the JSON's
  keys are sorted)."""
  return [(p, numbers['width'][p]) for p in PARAMETRIZATIONS
          if p in numbers['width']]


def _means(stats: Sequence[Dict[str, float]]) -> List[float]:
  return [s['mean'] for s in stats]


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """``{claim: holds}``, each read from the numbers (none typed)."""
  a = numbers['alpha']
  dist, change = _means(a['kernel_distance']), _means(a['param_change'])
  rich, lazy = a['alignment_gain'][0], a['alignment_gain'][-1]
  out = {
      f'kernel distance from init falls at least {FACTOR:g}x from the smallest '
      'to the largest alpha': dist[0] >= FACTOR * dist[-1],
      'relative parameter change falls at every step up in alpha':
          all(x > y for x, y in zip(change, change[1:])),
      # Beyond two standard errors at the smallest alpha, and 10x the largest's.
      'the kernel-label alignment rises in the rich regime (smallest alpha) '
      f'and {FACTOR:g}x less in the lazy one (largest alpha)':
          rich['mean'] > 2 * rich['std'] / np.sqrt(rich['n'])
          and rich['mean'] > FACTOR * abs(lazy['mean']),
  }
  for p, w in _width_sweeps(numbers):
    d = _means(w['kernel_distance'])
    out[f'{p} parametrization: kernel distance falls at least {FACTOR:g}x '
        'from the smallest to the largest width'] = d[0] >= FACTOR * d[-1]
  return out


def readme_row(numbers: Dict[str, Any]) -> str:
  """The README's table rows, one per figure, every number from ``numbers``."""
  a, n = numbers['alpha'], numbers['num_seeds']
  sci = lambda s: f"{s['mean']:.1e}"
  gain = lambda s: f"{s['mean']:+.1e} ± {s['std']:.1e}"
  peak = int(np.argmax(_means(a['alignment_gain'])))
  rows = [
      '| ![lazy vs rich](docs/figures/lazy_vs_rich_alpha.png) | Output scale '
      f"alpha from {a['alphas'][0]:g} to {a['alphas'][-1]:g} "
      '(`python -m experiments.reproduce lazy_vs_rich`, `configs/lazy_rich.py`: '
      f"centered width-{a['width']} ReLU MLP, SGD at rate / alpha², {n} seeds): "
      f"kernel distance from init falls from {sci(a['kernel_distance'][0])} to "
      f"{sci(a['kernel_distance'][-1])} and relative parameter change from "
      f"{a['param_change'][0]['mean']:.2f} to {sci(a['param_change'][-1])}; "
      f"label alignment changes by {gain(a['alignment_gain'][0])} at the "
      f"smallest alpha, {gain(a['alignment_gain'][-1])} at the largest (most: "
      f"{gain(a['alignment_gain'][peak])} at alpha {a['alphas'][peak]:g}). |"]
  if numbers['width']:
    parts = []
    for p, w in _width_sweeps(numbers):
      parts.append(f"to {sci(w['kernel_distance'][-1])} under the {LABELS[p]} "
                   f"parametrization (from {sci(w['kernel_distance'][0])})")
    w0 = _width_sweeps(numbers)[0][1]
    rows.append(
        '| ![width](docs/figures/lazy_vs_rich_width.png) | Width '
        f"{w0['widths'][0]} to {w0['widths'][-1]} at alpha = {w0['alpha']:g}: "
        f"kernel distance from init falls {' and '.join(parts)}; the standard "
        'parametrization with a rate ~ 1/width, the NTK one with one rate. |')
  return '\n'.join(rows)


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Draws `FIGURES` into ``figures_dir`` from the numbers alone; their paths."""
  os.makedirs(figures_dir, exist_ok=True)
  a, paths = numbers['alpha'], []
  fig, axes = plots.figure(2, width=5.0, height=3.8)
  for key, marker, label in (('kernel_distance', 'o-', 'kernel distance from init'),
                             ('param_change', 's--', 'relative parameter change')):
    axes[0].errorbar(a['alphas'], _means(a[key]), [s['std'] for s in a[key]],
                     fmt=marker, capsize=3, label=label)
  axes[0].set(xscale='log', yscale='log', xlabel='alpha (output scale)',
              title='movement from init')
  axes[0].legend()
  gain = a['alignment_gain']  # Per seed, final - init: the seeds' inits differ.
  axes[1].errorbar(a['alphas'], _means(gain), [s['std'] for s in gain], fmt='o-',
                   capsize=3)
  axes[1].axhline(0.0, color='gray', lw=0.5)
  axes[1].set(xscale='log', xlabel='alpha', ylabel='alignment after - at init',
              title=f"kernel-label alignment gain (mean ± std, "
              f"{numbers['num_seeds']} seeds)")
  paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[0])))
  if numbers['width']:
    fig, (ax,) = plots.figure(width=5.0, height=3.8)
    for (p, w), marker in zip(_width_sweeps(numbers), ('o-', 's--')):
      ax.errorbar(w['widths'], _means(w['kernel_distance']),
                  [s['std'] for s in w['kernel_distance']], fmt=marker,
                  capsize=3, label=f'{LABELS[p]} parametrization')
    ax.set(xscale='log', yscale='log', xlabel='width',
           ylabel='kernel distance from init', title=f"alpha = {w['alpha']:g}")
    ax.legend()
    paths.append(plots.save(fig, os.path.join(figures_dir, FIGURES[1])))
  return paths
