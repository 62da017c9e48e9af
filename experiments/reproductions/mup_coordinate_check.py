r"""muP's coordinate check: layer-output changes across widths, muP vs standard.

  python -m experiments.reproduce mup_coordinate_check [--size=smoke|full] [--seeds=0,1,2]

Claim. Yang et al. ("Tensor Programs V", 2021, App. D.1): under muP the
coordinates of every layer's output move by the same amount at every width
during training (input layer, hidden layers *and* the readout), while under
the standard parametrization with Adam the hidden layers' and the readout's
moves grow with width (~ width: every one of ``fan_in`` inputs moves its
weight by ~lr).

What runs, per parametrization, width and seed (init and data order):
`configs/mup.py` (``:standard`` for the standard parametrization,
``:width=N``) -- a ReLU MLP with two hidden layers of width ``N`` on
teacher-student regression, Adam at a constant rate, muP's
``base_width = 64`` (the model half in `dynamics.models.layers.Knobs`, the
per-layer rates in `dynamics.parametrization`). The library's
`dynamics.step.train_step` (``Run.train_step``) takes ``T`` updates; after
each, the size of the change of each layer's output on a fixed held-out batch
is measured, ``sqrt(mean((h_t - h_0)^2))`` (the Dense outputs: ``dense_0``
the input layer, ``dense_1`` the hidden layer, ``head`` the readout). The
*slope* of a layer at step ``t`` is the least-squares slope of ``log size``
vs ``log width`` over the widths (sizes averaged over the seeds first).
muP's readout starts at zero, so no gradient reaches the layers below it on
the first update: their change at ``t = 1`` is exactly 0 and their slopes
are taken from ``t = 2`` on (``MUP_FROM_STEP``).
"""

from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis.results.mup_coordinate_check import LAYERS, PARAMETRIZATIONS
from configs import mup as mup_config
from dynamics import runs

DEFAULT_SEEDS = (0, 1, 2)
WIDTHS = {'full': (64, 128, 256, 512, 1024, 2048, 4096),
          'smoke': (256, 4096)}


def config(size: str, parametrization: str, width: int, seed: int = 0):
  """`configs/mup.py` at one parametrization, width and seed."""
  variants = [f'width={int(width)}'] + (['standard'] if parametrization ==
                                        'standard' else [])
  variants += ['smoke'] if size == 'smoke' else []
  c = mup_config.get_config(','.join(variants))
  c.seed = int(seed)
  return c


def configs(size: str) -> Dict[str, Any]:
  return {p: runs.config_record(config(size, p, mup_config.BASE_WIDTH))
          for p in PARAMETRIZATIONS}


def layer_outputs(run, params, inputs) -> Dict[str, jax.Array]:
  """The output of each Dense layer of the MLP (before its activation)."""
  _, state = run.model.apply({'params': params}, inputs, train=False,
                             capture_intermediates=True,
                             mutable=['intermediates'])
  return {name: state['intermediates'][name]['__call__'][0] for name in LAYERS}


def coordinate_sizes(seed_runs: Sequence[Any]) -> np.ndarray:
  """``sizes[t - 1, l]``: RMS change of layer ``l``'s output on the probe
  batch after ``t`` updates of ``Run.train_step``, ``t = 1 .. num_steps``,
  averaged over ``seed_runs`` (Runs of one config at different seeds; the
  first one's compiled step serves them all).
  """
  first = seed_runs[0]
  outputs = jax.jit(lambda p, x: layer_outputs(first, p, x))
  host = lambda p, x: {n: np.asarray(v, np.float64)
                       for n, v in jax.device_get(outputs(p, x)).items()}
  per_seed = []
  for run in seed_runs:
    inputs = jnp.asarray(run.probe_batches(1)[0]['inputs'])
    state = run.init_state()
    before = host(state.params, inputs)
    sizes = []
    for t in range(run.config.num_steps):
      batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(t))
      state, _ = first.train_step(state, batch)
      after = host(state.params, inputs)
      sizes.append([np.sqrt(np.mean((after[n] - before[n]) ** 2))
                    for n in LAYERS])
    per_seed.append(sizes)
  return np.mean(np.asarray(per_seed, np.float64), axis=0)


def slopes(widths: Sequence[int], sizes_WxT: np.ndarray) -> List[float]:
  """Least-squares slope of ``log size`` against ``log width`` at each step
  (None where some size is 0: the layer has not moved yet).

  Example:
    >>> [round(s, 6) for s in slopes([64, 256], [[1.0, 2.0], [4.0, 2.0]])]
    [1.0, 0.0]
    >>> slopes([64, 256], [[1.0, 0.0], [4.0, 2.0]])[1] is None
    True
  """
  x = np.log(np.asarray(widths, np.float64))
  out = []
  for col in np.asarray(sizes_WxT, np.float64).T:
    out.append(None if np.any(col <= 0) else
               float(np.polyfit(x, np.log(col), 1)[0]))
  return out


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  seeds, widths = [int(s) for s in seeds], WIDTHS[size]
  sizes = {}
  for p in PARAMETRIZATIONS:
    per_width = []
    for w in widths:
      per_width.append(coordinate_sizes(
          [runs.Run(config(size, p, w, s)) for s in seeds]))
      log(f'{p} width {w}: ' + ', '.join(
          f'{n} {v:.4f}' for n, v in zip(LAYERS, per_width[-1][-1])))
    sizes[p] = np.asarray(per_width)  # widths x steps x layers
  c = config(size, 'mup', mup_config.BASE_WIDTH)
  return {
      'widths': list(widths), 'layers': list(LAYERS),
      'steps': list(range(1, int(c.num_steps) + 1)),
      'setup': {'base_width': int(c.model.base_width),
                'learning_rate': float(c.optimizer.learning_rate),
                'optimizer': c.optimizer.name,
                'batch_size': int(c.data.batch_size),
                'num_seeds': len(seeds)},
      'sizes': {p: sizes[p].tolist() for p in PARAMETRIZATIONS},
      'slopes': {p: {n: slopes(widths, sizes[p][:, :, i])
                     for i, n in enumerate(LAYERS)} for p in PARAMETRIZATIONS},
  }
