r"""The training Jacobian of a small MLP on digits, against white noise.

  python -m experiments.reproduce training_jacobian [--size=smoke|full] [--seeds=0,1,2]

Claims. Belrose & Scherlis ("Understanding Gradient Descent through the
Training Jacobian", 2024): with data order and randomness fixed, training is a
map :math:`\theta_0 \mapsto \theta_T` whose Jacobian has a *bulk* of singular
values :math:`\approx 1` (directions training leaves alone); in their setting
(`configs/jacobian.py`: a 64-64-10 GELU MLP, SGD with momentum, 625 steps)
published re-runs find ~38% of the singular values within 1e-2 of 1 on
digits but ~3% when the images are white noise of the same shape; and moving
the initialization along bulk directions barely changes the trained network's
outputs, unlike moving it along the top singular directions.

What runs, per seed (init and data order) and dataset (digits, white noise):
`analysis.jacobian.make_train_fn` unrolls the library's
`dynamics.step.train_step` over the run's batches; `training_jacobian` is the
dense :math:`P \times P` Jacobian (forward mode); its singular values are
split by `spectrum_split` (bulk: :math:`|s - 1| \le 10^{-2}`). Part of the
bulk is trivial (`trivial_basis`, singular value exactly 1): first-layer
weights of pixels that are 0 in every training image never receive a
gradient, and a constant added to every class's head weights is invisible to
the softmax; their share is reported separately. Perturbation (digits):
retrain from :math:`\theta_0 + \epsilon v` for 5 random unit vectors of the
bulk subspace with the trivial part projected out, 5 random unit vectors and
the 5 top right singular vectors, and compare the held-out outputs (logits)
with the unperturbed run's (relative norm, averaged over the 5).
"""

import time
from typing import Any, Dict, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from jax.flatten_util import ravel_pytree

from analysis import jacobian as jac_lib
from analysis import results
from analysis.results.training_jacobian import DATASETS, PERTURBED
from configs import jacobian as jacobian_config
from dynamics import runs
from dynamics.types import param_names

# Three seeds at full size, the fewest that give a mean and a spread: each
# dense 4,810 x 4,810 Jacobian takes 130 s on an idle 2-core CPU (2.5x that
# under load), so the six (seed, dataset) runs take about 20 minutes. The
# rows state findings of each seed, not comparisons, so no test needs 5.
DEFAULT_SEEDS = (0, 1, 2)
BULK_TOL = 1e-2          # |s - 1| <= BULK_TOL: the bulk.
EPSILON = 1.0            # Size of the unit-direction perturbation of theta_0.
NUM_DIRECTIONS = 5       # Bulk and top directions perturbed.
# Bulk fractions published re-runs of the reference setting report.
PUBLISHED = {'digits': 0.38, 'white noise': 0.03}
FIRST_LAYER = 'dense_0/kernel'  # Rows of never-lit pixels never train.
HEAD = 'head'            # The classifier: a constant shift of its logits.

# Smoke: hidden width 16 (1,210 parameters), 200 steps of batch 32 (digits'
# bulk fraction ~3.9x white noise's there; width 8 or 100 steps give 2.5-3.5x).
SIZES = {'full': {},
         'smoke': dict(hidden_sizes=(16,), num_steps=200, batch_size=32)}


def config(size: str, seed: int, dataset: str):
  """`configs/jacobian.py` (shrunk at smoke size), seeded."""
  c = jacobian_config.get_config()
  c.seed = int(seed)
  s = SIZES[size]
  if s:
    c.model.hidden_sizes = s['hidden_sizes']
    c.num_steps = s['num_steps']
    c.eval_every = s['num_steps']
    c.data.batch_size = s['batch_size']
  c.data.white_noise = dataset == 'white noise'
  return c


def configs(size: str) -> Dict[str, Any]:
  return {d: runs.config_record(config(size, DEFAULT_SEEDS[0], d))
          for d in DATASETS}


def trivial_basis(run: runs.Run, params: Any) -> np.ndarray:
  """Orthonormal rows spanning directions training cannot change (``J v = v``).

  The first-layer weights of pixels that are 0 in every training image (they
  never receive a gradient), and, for each input of the classifier head and
  for its bias, adding one constant to every class's weight (the softmax
  cross-entropy does not see it, so its gradient there is always 0).

  Returns:
    ``(k, P)`` rows in the order of `jax.flatten_util.ravel_pytree`.
  """
  x = np.asarray(run.dataset.full_batch()['inputs'])
  dead = np.flatnonzero(np.all(x.reshape(len(x), -1) == 0, axis=0))
  size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
  rows, offset = [], 0
  for name, leaf in zip(param_names(params), jax.tree.leaves(params)):
    shape = np.shape(leaf)
    if name == FIRST_LAYER:
      for i in dead:
        for j in range(shape[1]):
          rows.append(np.zeros(size))
          rows[-1][offset + i * shape[1] + j] = 1.0
    elif name in (HEAD + '/kernel', HEAD + '/bias'):
      classes = shape[-1]
      for j in range(int(np.prod(shape[:-1]))):
        rows.append(np.zeros(size))
        rows[-1][offset + j * classes:offset + (j + 1) * classes] = (
            1 / np.sqrt(classes))
    offset += int(np.prod(shape))
  return np.asarray(rows).reshape(len(rows), size)


def measure(size: str, seed: int, dataset: str, log=print) -> Dict[str, Any]:
  """The spectrum of one run (and, on digits, the perturbation test)."""
  run = runs.Run(config(size, seed, dataset))
  train_fn, params_0 = jac_lib.make_train_fn(run)
  start = time.time()
  jac = np.asarray(jac_lib.training_jacobian(train_fn, params_0=params_0),
                   np.float64)
  seconds = time.time() - start
  perturb = dataset == 'digits'
  # One BLAS thread: on the shared 2-core machine two threads contending with
  # other jobs made the SVD 4-5x slower than one.
  with threadpoolctl.threadpool_limits(1, user_api='blas'):
    if perturb:
      _, s, vt = np.linalg.svd(jac)
    else:
      s = np.linalg.svd(jac, compute_uv=False)
  split = jac_lib.spectrum_split(s, BULK_TOL)
  trivial = trivial_basis(run, params_0)
  out = {'num_params': int(s.size), 'num_steps': int(run.config.num_steps),
         'seconds_jacobian': round(seconds, 1),
         'bulk_fraction': float(split['bulk_fraction']),
         'amplified_fraction': float(split['amplified_fraction']),
         'contracted_fraction': float(split['contracted_fraction']),
         'trivial_fraction': len(trivial) / s.size,
         # J v = v on the trivial directions: the largest |J v - v|.
         'trivial_residual': float(np.abs(trivial @ jac.T - trivial).max()),
         'largest': float(s[0]), 'smallest': float(s[-1]),
         'singular_values': [float(f'{x:.6g}') for x in s]}
  log(f'seed {seed}, {dataset}: {s.size} parameters, Jacobian in '
      f'{seconds:.0f} s, bulk {split["bulk_fraction"]:.1%}')
  if perturb:
    out['perturbation'] = perturbation(run, train_fn, params_0, s, vt, trivial)
  return out


def perturbation(run, train_fn, params_0, s, vt, trivial) -> Dict[str, Any]:
  """Relative change of the held-out outputs after retraining from
  ``theta_0 + EPSILON v``, averaged over `NUM_DIRECTIONS` unit vectors ``v``
  of each kind: random in the bulk right singular subspace with the trivial
  directions projected out ('bulk'), random ('random'), the top right
  singular vectors ('top')."""
  flat0, unravel = ravel_pytree(params_0)
  x_eval = jnp.asarray(run.dataset.eval_batch(0)['inputs'])
  apply = run.apply_fn({})
  outputs = jax.jit(lambda flat: apply(train_fn(unravel(flat)), x_eval))
  base = outputs(flat0)
  rng = np.random.default_rng(run.config.seed)
  bulk_rows = vt[np.abs(s - 1) <= BULK_TOL]
  bulk = rng.normal(size=(NUM_DIRECTIONS, len(bulk_rows))) @ bulk_rows
  bulk -= (bulk @ trivial.T) @ trivial
  directions = {'bulk': bulk, 'random': rng.normal(size=bulk.shape),
                'top': vt[:NUM_DIRECTIONS]}
  out = {'epsilon': EPSILON}
  for name, vectors in directions.items():
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out[name] = float(np.mean([
        jnp.linalg.norm(outputs(flat0 + EPSILON * jnp.asarray(v, flat0.dtype))
                        - base) / jnp.linalg.norm(base) for v in vectors]))
  return out


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  per_seed = {f'seed={seed} {d}': measure(size, seed, d, log)
              for seed in seeds for d in DATASETS}
  return summarize(size, seeds, per_seed)


def summarize(size: str, seeds: Sequence[int],
              per_seed: Mapping[str, Any]) -> Dict[str, Any]:
  """Mean ± std over seeds of every reported number; seed 0's spectra."""
  def stats(dataset, fn):
    return results.mean_std([fn(per_seed[f'seed={s} {dataset}']) for s in seeds])

  out = {'size': size, 'seeds': [int(s) for s in seeds], 'bulk_tol': BULK_TOL,
         'published': dict(PUBLISHED)}
  first = per_seed[f'seed={seeds[0]} digits']
  out.update(num_params=first['num_params'], num_steps=first['num_steps'])
  for d in DATASETS:
    out[d] = {k: stats(d, lambda r, k=k: r[k]) for k in (
        'bulk_fraction', 'amplified_fraction', 'contracted_fraction',
        'trivial_fraction', 'trivial_residual', 'largest', 'smallest',
        'seconds_jacobian')}
    out[d]['singular_values'] = per_seed[f'seed={seeds[0]} {d}']['singular_values']
  out['bulk_ratio'] = results.mean_std([
      per_seed[f'seed={s} digits']['bulk_fraction']
      / max(per_seed[f'seed={s} white noise']['bulk_fraction'], 1e-12)
      for s in seeds])
  out['perturbation'] = {name: stats('digits', lambda r, name=name:
                                     r['perturbation'][name])
                          for name in PERTURBED}
  out['perturbation']['epsilon'] = EPSILON
  out['perturbation']['ratio'] = results.mean_std([
      per_seed[f'seed={s} digits']['perturbation']['top']
      / per_seed[f'seed={s} digits']['perturbation']['bulk'] for s in seeds])
  out['perturbation']['random_ratio'] = results.mean_std([
      per_seed[f'seed={s} digits']['perturbation']['random']
      / per_seed[f'seed={s} digits']['perturbation']['bulk'] for s in seeds])
  out['per_seed'] = {k: {kk: vv for kk, vv in v.items()
                         if kk != 'singular_values'}
                     for k, v in per_seed.items()}
  return out
