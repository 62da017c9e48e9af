r"""Lazy vs rich training, seen through the NTK: output scale alpha and width.

  python -m experiments.reproduce lazy_vs_rich [--size=smoke|full] [--seeds=0,1,2,3,4]

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


from analysis import ntk as ntk_lib
from analysis import probes
from analysis import results
from analysis.results.lazy_vs_rich import PARAMETRIZATIONS
from configs import lazy_rich
from dynamics import runs, train

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
ALPHAS = {'full': (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0), 'smoke': (0.1, 10.0)}
WIDTHS = {'full': (64, 256, 1024, 4096), 'smoke': (16, 1024)}
WIDTH_ALPHA = 1.0
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
  out = {f'alpha={a:g}': runs.config_record(config(variant(size, a)))
         for a in ALPHAS[size]}
  for p in PARAMETRIZATIONS:
    for w in WIDTHS[size]:
      arg = variant(size, WIDTH_ALPHA, w, p)
      out[arg] = runs.config_record(config(arg))
  return out


def measure(c, workdir: str) -> Dict[str, float]:
  """Trains ``c`` into ``workdir``; the NTK and parameter movement."""
  state = train.train_and_evaluate(c, workdir, probes=probes.from_config(c))
  run = runs.Run.open(workdir)
  lines = run.metrics()
  at = lambda step, key: next(m[key] for m in lines
                              if m['step'] == step and key in m)
  last = c.num_steps
  params_0 = run.params(0)
  return {
      'kernel_distance': at(last, 'ntk_distance_init'),
      'param_change': float(ntk_lib.relative_param_change(params_0, state.params)),
      'alignment_init': at(0, 'ntk_alignment'),
      'alignment_final': at(last, 'ntk_alignment'),
      'alignment_gain': at(last, 'ntk_alignment') - at(0, 'ntk_alignment'),
      'eval_loss': at(last, 'eval_loss'),
  }


def _sweep(args: Sequence[str], seeds: Sequence[int], log) -> List[Dict[str, Any]]:
  """Per variant string, each metric's `results.mean_std` over the seeds."""
  out = []
  with tempfile.TemporaryDirectory(prefix='lazy_vs_rich_') as root:
    for arg in args:
      per_seed = []
      for seed in seeds:
        workdir = os.path.join(root, f'{arg}_seed{seed}')
        per_seed.append(measure(config(arg, seed), workdir))
        log(f'{arg} seed {seed}: ' + ', '.join(
            f'{k} {v:.3g}' for k, v in per_seed[-1].items()))
      out.append({k: results.mean_std([r[k] for r in per_seed]) for k in METRICS})
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
