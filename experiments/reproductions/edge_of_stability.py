r"""The edge of stability: full-batch GD, unnormalized SAM, small-batch SGD.

  python -m experiments.reproduce edge_of_stability [--size=smoke|full] [--seeds=0,1,2,3,4]

Claims. Cohen et al. ("Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability", ICLR 2021): full-batch GD at learning rate
:math:`\eta` drives the sharpness :math:`\lambda_{\max}` of the training loss
up until it reaches :math:`2/\eta`, then hovers there. Unnormalized SAM
(:math:`w \leftarrow w - \eta\nabla L(w + \rho\nabla L(w))`, Andriushchenko &
Flammarion 2022) is stable on a quadratic while :math:`\eta\lambda(1 +
\rho\lambda) < 2` (Agarwala & Dauphin 2023), so its sharpness should settle at
the root :math:`\lambda^* = (\sqrt{1 + 8\rho/\eta} - 1)/(2\rho)`, below GD's.
Small-batch SGD: Wu & Su ("The Implicit Regularization of Dynamical Stability
in SGD", ICML 2023) show that a global minimum linearly stable for SGD has
:math:`\mathrm{tr}\,H \le 2/\eta` (GD's stability bounds only
:math:`\lambda_{\max}`); we measure the trace along SGD and GD and say where
it ends relative to that bound.

What runs, per seed (init and data): `configs/eos.py` (a 16-64-64-1 tanh
MLP, MSE on 256 noisy teacher-student examples) through
`dynamics.train.train_and_evaluate`: GD at each rate; SAM through the
library's `dynamics.optim.sam_gradient` (``optimizer.sam.rho``,
``optimizer.sam.normalize=False``); SGD with ``data.batch_size`` small. The
library's training-time probe (`analysis.probes.SharpnessProbe`, see
`probe`) measures the sharpness (warm-started Lanczos) and the Hessian trace
(Hutchinson) of the loss on the whole training set at the periods
``config.analysis`` declares, the same for every optimizer. "Last third" is
the mean over the last third of the run.
"""

import math
import tempfile
from typing import Any, Dict, List, Mapping, Sequence

import jax
import numpy as np

from analysis import probes
from analysis import results
from configs import eos as eos_config
from dynamics import runs
from dynamics import train as train_lib

DEFAULT_SEEDS = (0, 1, 2, 3, 4)

# What runs at each size (SAM's and SGD's rates are among GD's, whose runs
# are their baselines). Smoke: two GD rates, two rhos and SGD at the larger
# rate 0.2 (2/eta is reached within ~150 steps there), 600 steps, one seed.
SIZES = {
    'full': dict(steps=3000, gd_rates=(0.1, 0.2, 0.3), sam_rate=0.1,
                 sam_rhos=(0.01, 0.02, 0.05), sgd_rate=0.1, sgd_batch=8,
                 every=20, trace_every=100, trace_probes=20),
    'smoke': dict(steps=600, gd_rates=(0.2, 0.3), sam_rate=0.2,
                  sam_rhos=(0.02, 0.05), sgd_rate=0.2, sgd_batch=8,
                  every=20, trace_every=100, trace_probes=10),
}


def sam_prediction(rate: float, rho: float) -> float:
  r"""The root :math:`\lambda` of :math:`\eta\lambda(1 + \rho\lambda) = 2`.

  Example:
    >>> round(sam_prediction(0.1, 0.05), 3)
    12.361
  """
  return (math.sqrt(1 + 8 * rho / rate) - 1) / (2 * rho)


def config(size: str, seed: int, rate: float, rho: float = None,
           batch_size: int = None):
  """`configs/eos.py` with the reproduction's steps, rate and measurements.

  Full-batch GD by default; ``rho``: unnormalized SAM; ``batch_size``: SGD.
  """
  s = SIZES[size]
  c = eos_config.get_config()
  c.seed = int(seed)
  c.num_steps = s['steps']
  c.optimizer.learning_rate = float(rate)
  c.log_every = s['every']
  c.eval_every = s['steps']
  c.progress = False
  c.checkpoint.every_steps = s['steps']
  c.checkpoint.async_save = False
  c.analysis.sharpness_every = s['every']
  c.analysis.trace_every = s['trace_every']
  c.analysis.sharpness_data = 'train'
  if rho is not None:
    c.optimizer.sam.rho = float(rho)
    c.optimizer.sam.normalize = False
  if batch_size is not None:
    c.data.batch_size = int(batch_size)
  # The probe's batches are one epoch: the whole training set.
  c.analysis.sharpness_batches = c.data.num_train // c.data.batch_size
  return c


def run_configs(size: str, seed: int) -> Dict[str, Any]:
  """Label -> config of every run of one seed."""
  s = SIZES[size]
  out = {f'gd eta={r:g}': config(size, seed, r) for r in s['gd_rates']}
  out.update({f'sam eta={s["sam_rate"]:g} rho={rho:g}':
              config(size, seed, s['sam_rate'], rho=rho)
              for rho in s['sam_rhos']})
  out[f'sgd eta={s["sgd_rate"]:g} batch={s["sgd_batch"]}'] = config(
      size, seed, s['sgd_rate'], batch_size=s['sgd_batch'])
  return out


def configs(size: str) -> Dict[str, Any]:
  return {label: runs.config_record(c)
          for label, c in run_configs(size, DEFAULT_SEEDS[0]).items()}


def probe(c, loss_fn, trace_probes: int) -> probes.SharpnessProbe:
  """The library's sharpness probe on the whole training set, at the periods
  ``c.analysis`` declares: the sharpness (Lanczos warm-started from the
  previous top eigenvector plus 10% noise, stopping at a 3e-3 relative
  residual, at most ``c.analysis.sharpness_iters`` HVPs) with the loss
  there, and the Hessian trace (Hutchinson, ``trace_probes`` probes). The
  same for every optimizer, with one loss function shared by all runs of
  the model (so Lanczos and Hutchinson compile once, not once per run)."""
  a = c.analysis
  return probes.SharpnessProbe(
      a.sharpness_every, trace_every=a.trace_every,
      batches=lambda run: [run.dataset.full_batch()], loss_fn=loss_fn,
      num_iters=a.sharpness_iters, trace_probes=trace_probes, log_loss=True,
      seed=c.seed)


def _train(c, loss_fn, trace_probes: int) -> Dict[str, List[float]]:
  """Trains ``c`` in a scratch workdir; the probe's series."""
  with tempfile.TemporaryDirectory() as workdir:
    train_lib.train_and_evaluate(c, workdir,
                                 probes=[probe(c, loss_fn, trace_probes)])
    records = runs.Run.open(workdir).metrics()
  curve = {'step': [], 'sharpness': [], 'loss': [], 'trace_step': [],
           'trace': []}
  for r in records:
    if 'sharpness' in r:
      curve['step'].append(int(r['step']))
      curve['sharpness'].append(round(float(r['sharpness']), 4))
      curve['loss'].append(float(f"{r['sharpness_loss']:.4g}"))
    if 'hessian_trace' in r:
      curve['trace_step'].append(int(r['step']))
      curve['trace'].append(round(float(r['hessian_trace']), 2))
  return curve


def last_third(values: Sequence[float]) -> float:
  """Mean of the last third of ``values``."""
  v = np.asarray(values, np.float64)
  return float(v[-max(1, len(v) // 3):].mean())


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  s = SIZES[size]
  loss_fn = None
  curves: Dict[str, Dict[str, List[float]]] = {}
  for seed in seeds:
    for label, c in run_configs(size, seed).items():
      if loss_fn is None:  # One loss for all runs: the model never changes.
        loss_fn = runs.Run(c).loss_fn({})
      log(f'seed {seed}: {label}')
      curves[f'{label} seed={seed}'] = _train(c, loss_fn, s['trace_probes'])
  c0 = config(size, seeds[0], s['gd_rates'][0])
  num_params = sum(int(np.size(x)) for x in jax.tree.leaves(
      runs.Run(c0).abstract_state.params))
  return summarize(size, seeds, curves, num_params)


def summarize(size: str, seeds: Sequence[int], curves: Mapping[str, Any],
              num_params: int) -> Dict[str, Any]:
  """The numbers of the results file, from the runs' curves."""
  s = SIZES[size]
  values = lambda label, fn: [fn(curves[f'{label} seed={x}']) for x in seeds]
  stats = lambda label, fn: results.mean_std(values(label, fn))
  sharp = lambda c: last_third(c['sharpness'])
  trace = lambda c: last_third(c['trace'])
  final_loss = lambda c: c['loss'][-1]
  gd = {}
  for rate in s['gd_rates']:
    label = f'gd eta={rate:g}'
    gd[f'{rate:g}'] = {
        'two_over_eta': 2 / rate, 'last_third': stats(label, sharp),
        'relative_error': stats(label, lambda c, r=rate: sharp(c) * r / 2 - 1),
        'initial': stats(label, lambda c: c['sharpness'][0]),
        'peak': stats(label, lambda c: max(c['sharpness'])),
        'final_loss': stats(label, final_loss)}
  gd_sam = values(f'gd eta={s["sam_rate"]:g}', sharp)
  sam = {}
  for rho in s['sam_rhos']:
    label, predicted = (f'sam eta={s["sam_rate"]:g} rho={rho:g}',
                        sam_prediction(s['sam_rate'], rho))
    sam[f'{rho:g}'] = {
        'predicted': predicted, 'last_third': stats(label, sharp),
        'relative_error': stats(label, lambda c, p=predicted: sharp(c) / p - 1),
        'vs_gd': results.compare(values(label, sharp), gd_sam)}
  sgd_label = f'sgd eta={s["sgd_rate"]:g} batch={s["sgd_batch"]}'
  gd_label = f'gd eta={s["sgd_rate"]:g}'
  sgd_trace, gd_trace = values(sgd_label, trace), values(gd_label, trace)
  sgd = {'two_over_eta': 2 / s['sgd_rate'],
         'trace': results.compare(sgd_trace, gd_trace),
         'trace_ratio': results.mean_std(np.divide(sgd_trace, gd_trace)),
         'sharpness': stats(sgd_label, sharp),
         'gd_sharpness': stats(gd_label, sharp),
         'final_loss': stats(sgd_label, final_loss)}
  return {'size': size, 'settings': dict(s), 'num_params': num_params,
          'seeds': [int(x) for x in seeds], 'gd': gd,
          'sam': {'rate': s['sam_rate'], 'gd_last_third': results.mean_std(gd_sam),
                  'rhos': sam},
          'sgd': sgd, 'curves': dict(curves)}
