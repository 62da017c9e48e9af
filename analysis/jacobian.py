r"""The training Jacobian :math:`J = \partial\theta_T / \partial\theta_0` of a whole run.

Following Belrose & Scherlis, "Understanding Gradient Descent through the
Training Jacobian" (2024): with the data order and every random draw fixed,
training is a deterministic map :math:`\theta_0 \mapsto \theta_T`; its Jacobian
says which directions of the initialization training amplifies
(:math:`\sigma > 1`), contracts (:math:`\sigma < 1`) or leaves alone (the
*bulk*, :math:`\sigma \approx 1`).

* `make_train_fn(config)` unrolls the core's ``train_step`` in a ``lax.scan``
  (``jax.checkpoint`` on every step and on segments of ``checkpoint_every``
  steps, so reverse mode stores ~``T / S + S`` states, not every activation).
* `training_jacobian_fn(config or train_fn)` returns ``(jvp, vjp)``: ``J v`` by
  forward mode (about two training runs of work), ``J^T u`` by reverse mode.
* `training_jacobian(...)` is the dense ``P x P`` Jacobian (``vmap`` of ``jvp``
  over chunks of basis vectors; for models up to ~5,000 parameters).
* `training_jacobian_svd(..., k)` gives the top and bottom singular triplets by
  Lanczos on :math:`J^\top J` for larger models.

Randomness must be fixed: a ``train_fn`` whose two traces differ (NumPy
randomness drawn at trace time, a key made from the clock) or that uses
stateful RNG primitives is refused with an explanation.

Command: ``python -m analysis.jacobian --config=configs/jacobian.py`` writes the
singular-value spectrum (JSON + PNG), its split into bulk / amplified /
contracted subspaces (thresholds ``--bulk_tol``) and the overlap of those
subspaces with the top Hessian eigenvectors at the end of training.
"""

import functools
import json
import math
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any
TrainFn = Callable[[PyTree], PyTree]
ConfigOrTrainFn = Union[ml_collections.ConfigDict, TrainFn]
_STATEFUL_RNG = ('rng_uniform', 'rng_bit_generator')


class RandomnessNotFixedError(ValueError):
  """The training run is not a deterministic function of its initialization."""


class TrainingJacobian(NamedTuple):
  """Products with the training Jacobian at ``params_0`` (pytrees like it).

  Attributes:
    jvp: ``v -> J v`` (forward mode through the unrolled run).
    vjp: ``u -> J^T u`` (reverse mode, checkpointed).
  """
  jvp: Callable[[PyTree], PyTree]
  vjp: Callable[[PyTree], PyTree]


# --------------------------------------------------------------------------
# Unrolling a run
# --------------------------------------------------------------------------


def unroll(step_fn: Callable[[Any, Any], Any], state: Any, batches: Any,
           checkpoint_every: Optional[int] = None) -> Any:
  """``state`` after ``step_fn(state, batches[t])`` for every ``t``, in a scan.

  Every step is rematerialized (``jax.checkpoint``); with ``checkpoint_every
  = S`` the steps are also grouped in checkpointed segments of ``S``, so the
  reverse pass keeps ``T / S`` segment states plus ``S`` step states alive
  (``S ~ sqrt(T)`` is the classic choice) instead of every intermediate.
  """
  body = jax.checkpoint(lambda s, b: (step_fn(s, b), None))
  num = jax.tree.leaves(batches)[0].shape[0]
  if not checkpoint_every or checkpoint_every >= num:
    return jax.lax.scan(body, state, batches)[0]
  seg, n_seg = int(checkpoint_every), num // int(checkpoint_every)
  head = jax.tree.map(lambda a: a[:n_seg * seg].reshape((n_seg, seg) + a.shape[1:]),
                      batches)
  segment = jax.checkpoint(lambda s, bs: (jax.lax.scan(body, s, bs)[0], None))
  state = jax.lax.scan(segment, state, head)[0]
  if n_seg * seg < num:
    state = jax.lax.scan(body, state, jax.tree.map(lambda a: a[n_seg * seg:], batches))[0]
  return state


def _config_randomness_problem(config) -> Optional[str]:
  if config.seed is None:
    return ('config.seed is None: the initialization, data order and dropout '
            'masks would change from run to run; set an integer seed')
  return None


def make_train_fn(config: ml_collections.ConfigDict, num_steps: Optional[int] = None,
                  *, checkpoint_every: Optional[int] = None
                  ) -> Tuple[TrainFn, PyTree]:
  """``(train_fn, params_0)``: the core's run of ``config`` as a pure function.

  ``train_fn(params) -> params_T`` replays ``num_steps`` (default
  ``config.num_steps``) calls of ``dynamics.train.train_step`` on the run's
  fixed batches ``dataset.train_batch(0..T-1)`` with the run's rng (dropout
  masks are ``fold_in(rng, step)``: fixed), starting from ``params`` with a
  fresh optimizer state. ``params_0`` is the run's initialization.
  """
  from dynamics import train as train_lib
  problem = _config_randomness_problem(config)
  if problem:
    raise RandomnessNotFixedError(f'refusing the training Jacobian: {problem}.')
  num_steps = int(config.num_steps if num_steps is None else num_steps)
  parts = train_lib.build(config)
  state0 = train_lib.init_state(config, parts)
  first = parts.dataset.train_batch(0)
  again = parts.dataset.train_batch(0)
  if any(not np.array_equal(first[k], again[k]) for k in first):
    raise RandomnessNotFixedError(
        f'refusing the training Jacobian: data.name={config.data.name!r} '
        'returns different batches for the same index; the data order must be '
        'fixed.')
  batches = [parts.dataset.train_batch(i) for i in range(num_steps)]
  stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *batches)
  step = functools.partial(train_lib.train_step, model=parts.model, tx=parts.tx,
                           schedule=parts.schedule, options=parts.options)
  if checkpoint_every is None:
    checkpoint_every = max(1, int(round(math.sqrt(num_steps))))

  def train_fn(params):
    state = state0.replace(params=params, opt_state=parts.tx.init(params))
    final = unroll(lambda s, b: step(s, b)[0], state, stacked, checkpoint_every)
    return final.params

  return train_fn, state0.params


def _key_data(c):
  if hasattr(c, 'dtype') and jax.dtypes.issubdtype(c.dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(c))
  return np.asarray(c)


def _primitives(jaxpr) -> set:
  """Names of every primitive in ``jaxpr`` and its sub-jaxprs (scan, cond...)."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, 'jaxpr', item)   # ClosedJaxpr -> Jaxpr.
        if hasattr(inner, 'eqns'):
          names |= _primitives(inner)
  return names


def check_deterministic(train_fn: TrainFn, params_0: PyTree) -> None:
  """Refuses a ``train_fn`` whose randomness is not fixed.

  Traces ``train_fn`` twice: any difference between the two programs (their
  constants included) means randomness drawn at trace time (``np.random``
  without a seed, a key made from the clock), and forward- and reverse-mode
  products would then differ from each other. Stateful RNG primitives
  (``rng_uniform``, ``rng_bit_generator``) are refused as well.

  Raises:
    RandomnessNotFixedError: with the reason and how to fix it.
  """
  # Fresh wrappers: make_jaxpr caches traces by function identity.
  first = jax.make_jaxpr(lambda p: train_fn(p))(params_0)
  second = jax.make_jaxpr(lambda p: train_fn(p))(params_0)
  same = (str(first.jaxpr) == str(second.jaxpr)
          and len(first.consts) == len(second.consts)
          and all(np.array_equal(_key_data(a), _key_data(b))
                  for a, b in zip(first.consts, second.consts)))
  if not same:
    raise RandomnessNotFixedError(
        'refusing the training Jacobian: train_fn is not a deterministic '
        'function of params_0 (two traces of it differ). Randomness drawn while '
        'tracing, e.g. a dropout mask from np.random or a key made from the '
        'clock, would differ between J v and J^T u. Fix every random draw: '
        'derive keys from a fixed jax.random.key(seed) (fold_in the step) and '
        'pass the batches in a fixed order.')
  stateful = _primitives(first.jaxpr) & set(_STATEFUL_RNG)
  if stateful:
    raise RandomnessNotFixedError(
        f'refusing the training Jacobian: train_fn uses the stateful RNG '
        f'primitive(s) {sorted(stateful)}, whose draws are not a function of '
        'params_0; use jax.random with a fixed key instead.')


def _resolve(config_or_train_fn: ConfigOrTrainFn, num_steps: Optional[int],
             params_0: Optional[PyTree], checkpoint_every: Optional[int]
             ) -> Tuple[TrainFn, PyTree]:
  if isinstance(config_or_train_fn, ml_collections.ConfigDict):
    train_fn, init = make_train_fn(config_or_train_fn, num_steps,
                                   checkpoint_every=checkpoint_every)
    params_0 = init if params_0 is None else params_0
  else:
    if params_0 is None:
      raise ValueError('training_jacobian_fn(train_fn) needs params_0=')
    train_fn = config_or_train_fn
  check_deterministic(train_fn, params_0)
  return train_fn, params_0


def _flat(train_fn: TrainFn, params_0: PyTree):
  flat0, unravel = ravel_pytree(params_0)
  flat_fn = lambda x: ravel_pytree(train_fn(unravel(x)))[0]
  return flat_fn, flat0, unravel


# --------------------------------------------------------------------------
# Products, dense Jacobian, SVD
# --------------------------------------------------------------------------


def training_jacobian_fn(config_or_train_fn: ConfigOrTrainFn,
                         num_steps: Optional[int] = None, *,
                         params_0: Optional[PyTree] = None,
                         checkpoint_every: Optional[int] = None
                         ) -> TrainingJacobian:
  r"""Jacobian-vector products of the training map :math:`\theta_0 \mapsto \theta_T`.

  .. math::
     J = \frac{\partial \theta_T}{\partial \theta_0}
       = \prod_{t=T-1}^{0} \frac{\partial s_{t+1}}{\partial s_t}
         \Big|_{\theta\text{-block}}, \qquad s_t = (\theta_t, \text{opt state}_t).

  Args:
    config_or_train_fn: a config (built with `make_train_fn`, from its
      ``seed``) or ``train_fn(params_0) -> params_T`` (pure, e.g. a
      ``lax.scan``; use `unroll` for checkpointing).
    num_steps: steps of a config's run (default ``config.num_steps``).
    params_0: where to differentiate; required with a ``train_fn``, default
      the config's initialization.
    checkpoint_every: segment length of the checkpointed unroll (config form;
      default ``sqrt(T)``).

  Returns:
    ``TrainingJacobian(jvp, vjp)``; both are jitted and act on pytrees like
    ``params_0``.

  Raises:
    RandomnessNotFixedError: the run is not deterministic (see
      `check_deterministic`).

  Example:
    >>> a = jnp.diag(jnp.array([1.0, 2.0]))
    >>> train_fn = lambda th: jax.lax.fori_loop(0, 3, lambda i, t: t - 0.1 * a @ t, th)
    >>> jvp, vjp = training_jacobian_fn(train_fn, params_0=jnp.ones(2))
    >>> jvp(jnp.array([1.0, 1.0]))       # (1 - 0.1)^3, (1 - 0.2)^3
    Array([0.729, 0.512], dtype=float32)

  References:
    Belrose & Scherlis, "Understanding Gradient Descent through the Training
    Jacobian", arXiv:2412.07003 (2024).
  """
  train_fn, params_0 = _resolve(config_or_train_fn, num_steps, params_0,
                                checkpoint_every)
  jvp = jax.jit(lambda v: jax.jvp(train_fn, (params_0,), (v,))[1])
  vjp = jax.jit(lambda u: jax.vjp(train_fn, params_0)[1](u)[0])
  return TrainingJacobian(jvp, vjp)


def training_jacobian(config_or_train_fn: ConfigOrTrainFn,
                      num_steps: Optional[int] = None, *,
                      params_0: Optional[PyTree] = None,
                      chunk_size: int = 128, max_params: int = 20_000,
                      checkpoint_every: Optional[int] = None) -> jax.Array:
  """The dense training Jacobian ``(P, P)``: ``J[:, i] = J e_i``.

  Columns come from forward mode, ``vmap``-ed over chunks of ``chunk_size``
  basis vectors (the primal run is shared within a chunk); indices follow
  `jax.flatten_util.ravel_pytree` of ``params_0``.

  Args:
    config_or_train_fn, num_steps, params_0, checkpoint_every: as in
      `training_jacobian_fn`.
    chunk_size: basis vectors per compiled forward-mode pass (memory ~
      ``chunk_size`` copies of the optimizer state and activations).
    max_params: refuse larger models (use `training_jacobian_svd`).

  Returns:
    ``J`` in the parameters' dtype.
  """
  train_fn, params_0 = _resolve(config_or_train_fn, num_steps, params_0,
                                checkpoint_every)
  flat_fn, flat0, _ = _flat(train_fn, params_0)
  p = flat0.size
  if p > max_params:
    raise ValueError(f'a dense {p}x{p} training Jacobian is over max_params='
                     f'{max_params}; use training_jacobian_svd for the top and '
                     'bottom singular values')
  chunk = min(chunk_size, p)
  columns = jax.jit(jax.vmap(lambda v: jax.jvp(flat_fn, (flat0,), (v,))[1]))
  eye = jnp.eye(p, dtype=flat0.dtype)
  pad = (-p) % chunk
  if pad:  # One compiled chunk shape for all: pad the basis with zeros.
    eye = jnp.concatenate([eye, jnp.zeros((pad, p), eye.dtype)])
  cols = [columns(eye[i:i + chunk]) for i in range(0, p + pad, chunk)]
  return jnp.concatenate(cols)[:p].T


class TrainingSVD(NamedTuple):
  """Extreme singular triplets of the training Jacobian ``J = U S V^T``.

  Attributes:
    top: ``(k,)`` largest singular values, descending.
    top_v: ``(k, P)`` their right singular vectors (init space).
    top_u: ``(k, P)`` their left singular vectors (final space).
    bottom: ``(k,)`` smallest singular values, ascending.
    bottom_v, bottom_u: likewise.
  """
  top: jax.Array
  top_v: jax.Array
  top_u: jax.Array
  bottom: jax.Array
  bottom_v: jax.Array
  bottom_u: jax.Array


def training_jacobian_svd(config_or_train_fn: ConfigOrTrainFn, k: int,
                          num_steps: Optional[int] = None, *,
                          params_0: Optional[PyTree] = None,
                          num_iters: Optional[int] = None,
                          key: Optional[jax.Array] = None,
                          checkpoint_every: Optional[int] = None) -> TrainingSVD:
  r"""Top and bottom ``k`` singular triplets by Lanczos on :math:`J^\top J`.

  Each Lanczos step costs one ``jvp`` and one ``vjp`` through the run. Ritz
  values :math:`\theta` of :math:`J^\top J` give :math:`\sigma = \sqrt\theta`,
  right vectors :math:`v`, and :math:`u = J v / \sigma`. Both ends of the
  spectrum converge; the bottom end (contracted directions) more slowly, so
  raise ``num_iters`` until it stabilizes.

  Args:
    config_or_train_fn, num_steps, params_0, checkpoint_every: see
      `training_jacobian_fn`.
    k: triplets at each end.
    num_iters: Lanczos steps (default ``min(P, max(4 k, k + 40))``).
    key: start-vector key.

  Returns:
    A `TrainingSVD` (vectors flattened in ``ravel_pytree`` order).
  """
  from analysis import lanczos as lz
  train_fn, params_0 = _resolve(config_or_train_fn, num_steps, params_0,
                                checkpoint_every)
  flat_fn, flat0, _ = _flat(train_fn, params_0)
  p = flat0.size
  num_iters = min(p, max(4 * k, k + 40) if num_iters is None else num_iters)
  if k > num_iters:
    raise ValueError(f'k={k} exceeds the {num_iters} Lanczos iterations')

  def jtj(v):
    jv = jax.jvp(flat_fn, (flat0,), (v,))[1]
    return jax.vjp(flat_fn, flat0)[1](jv)[0]

  run = lz.lanczos(jax.tree_util.Partial(jtj), jnp.zeros_like(flat0), num_iters,
                   key=jax.random.key(0) if key is None else key)
  theta, s = lz.tridiagonal_eigh(run.alphas, run.betas)
  vecs = lz.ritz_vectors(run.basis, s)                   # descending
  sigma = jnp.sqrt(jnp.clip(jnp.asarray(theta, flat0.dtype), 0.0))
  jv = jax.jit(jax.vmap(lambda v: jax.jvp(flat_fn, (flat0,), (v,))[1]))
  top_v, bottom_v = vecs[:k], vecs[::-1][:k]
  top, bottom = sigma[:k], sigma[::-1][:k]
  safe = lambda x: jnp.where(x > 0, x, 1.0)[:, None]
  return TrainingSVD(top, top_v, jv(top_v) / safe(top),
                     bottom, bottom_v, jv(bottom_v) / safe(bottom))


def spectrum_split(singular_values: Any, bulk_tol: float = 1e-2) -> Dict[str, Any]:
  """Counts and fractions of bulk (``|s - 1| <= bulk_tol``), amplified
  (``s > 1 + bulk_tol``) and contracted (``s < 1 - bulk_tol``) singular values."""
  s = np.asarray(singular_values, np.float64)
  bulk = np.abs(s - 1.0) <= bulk_tol
  amplified, contracted = s > 1.0 + bulk_tol, s < 1.0 - bulk_tol
  n = max(len(s), 1)
  return {'bulk_tol': bulk_tol, 'num': int(len(s)),
          'bulk': int(bulk.sum()), 'amplified': int(amplified.sum()),
          'contracted': int(contracted.sum()), 'bulk_fraction': bulk.sum() / n,
          'amplified_fraction': amplified.sum() / n,
          'contracted_fraction': contracted.sum() / n}


# --------------------------------------------------------------------------
# Command: spectrum of a config's training Jacobian
# --------------------------------------------------------------------------


def _subspace_overlaps(vectors: np.ndarray, basis_rows: np.ndarray) -> np.ndarray:
  """``||B h||^2`` for each unit row ``h`` of ``vectors`` (rows of B orthonormal)."""
  if basis_rows.shape[0] == 0:
    return np.zeros(len(vectors))
  return np.sum((vectors @ basis_rows.T) ** 2, axis=1)


def analyze_config(config: ml_collections.ConfigDict, *, bulk_tol: float = 1e-2,
                   hessian_k: int = 10, dense_max: int = 5000, svd_k: int = 20,
                   chunk_size: int = 128) -> Dict[str, Any]:
  """Singular values of the run's training Jacobian, their bulk / amplified /
  contracted split, and the top Hessian eigenvectors' overlap with each part."""
  from analysis import hessian
  from dynamics import losses
  from dynamics import train as train_lib
  train_fn, params_0 = make_train_fn(config)
  flat0, unravel = ravel_pytree(params_0)
  p = int(flat0.size)
  t0 = time.time()
  report: Dict[str, Any] = {'config': config.name, 'num_params': p,
                            'num_steps': int(config.num_steps)}
  if p <= dense_max:
    jac = np.asarray(training_jacobian(train_fn, params_0=params_0,
                                       chunk_size=chunk_size), np.float64)
    report['seconds_jacobian'] = time.time() - t0
    u, s, _ = np.linalg.svd(jac)
    report['dense'] = True
  else:
    svd = training_jacobian_svd(train_fn, svd_k, params_0=params_0)
    report['seconds_jacobian'] = time.time() - t0
    s = np.concatenate([np.asarray(svd.top), np.asarray(svd.bottom)[::-1]])
    u = np.concatenate([np.asarray(svd.top_u), np.asarray(svd.bottom_u)[::-1]]).T
    report['dense'] = False
  report['singular_values'] = s.tolist()
  report['split'] = spectrum_split(s, bulk_tol)
  # Top Hessian eigenvectors of the training loss at theta_T, against the left
  # singular subspaces (the final-parameter side of J).
  params_t = train_fn(params_0)
  parts = train_lib.build(config)
  state = train_lib.init_state(config, parts)

  def loss_fn(params, batch):
    return losses.compute_loss(parts.model, params, state.model_state, batch,
                               None, parts.options, train=False)[0]

  batches = [jax.tree.map(jnp.asarray, parts.dataset.train_batch(i)) for i in range(4)]
  k = min(hessian_k, p)
  eigvals, eigvecs = hessian.top_eigenpairs(loss_fn, params_t, batches, k=k)
  h = np.stack([np.asarray(ravel_pytree(v)[0], np.float64) for v in eigvecs])
  parts_mask = {'bulk': np.abs(s - 1) <= bulk_tol, 'amplified': s > 1 + bulk_tol,
                'contracted': s < 1 - bulk_tol}
  report['hessian'] = {
      'eigenvalues': np.asarray(eigvals).tolist(),
      'overlap': {name: _subspace_overlaps(h, u[:, mask].T).tolist()
                  for name, mask in parts_mask.items()},
      'note': ('overlap[name][i] = squared norm of Hessian eigenvector i '
               'projected on the left singular vectors of that part'
               + ('' if report['dense'] else
                  ' (only the computed extreme singular vectors)')),
  }
  return report


def plot_spectrum(report: Dict[str, Any], path: str) -> None:
  """Sorted singular values with the bulk band, and the Hessian overlaps."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  s = np.sort(np.asarray(report['singular_values']))[::-1]
  tol = report['split']['bulk_tol']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  axes[0].semilogy(s, lw=1.5)
  axes[0].axhspan(1 - tol, 1 + tol, color='tab:green', alpha=0.3,
                  label=f"bulk |s-1|<={tol:g}: {report['split']['bulk_fraction']:.1%}")
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  config = f.config
  report = analyze_config(config, bulk_tol=f.bulk_tol, hessian_k=f.hessian_k,
                          dense_max=f.dense_max, svd_k=f.svd_k,
                          chunk_size=f.chunk_size)
  out = f.output_dir or os.path.join('runs', config.name, 'jacobian')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'spectrum.json'), 'w') as fh:
    json.dump(report, fh, indent=1)
  plot_spectrum(report, os.path.join(out, 'spectrum.png'))
  sp = report['split']
  print(f"{report['num_params']} parameters, {report['num_steps']} steps: "
        f"Jacobian in {report['seconds_jacobian']:.1f}s; singular values "
        f"{min(report['singular_values']):.3g}..{max(report['singular_values']):.3g}; "
        f"bulk {sp['bulk_fraction']:.1%}, amplified {sp['amplified_fraction']:.1%}, "
        f"contracted {sp['contracted_fraction']:.1%} (|s-1| <= {sp['bulk_tol']:g})")
  bulk = report['hessian']['overlap']['bulk']
  print('overlap of the top Hessian eigenvectors with the bulk: '
        + ', '.join(f'{b:.2f}' for b in bulk))
  print(f'wrote {out}/spectrum.json and {out}/spectrum.png')


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/jacobian.py[:smoke]',
                                  lock_config=True)
  flags.DEFINE_float('bulk_tol', 1e-2, 'Bulk: singular values within this of 1.')
  flags.DEFINE_integer('hessian_k', 10, 'Top Hessian eigenvectors compared.')
  flags.DEFINE_integer('dense_max', 5000, 'Largest model for the dense Jacobian.')
  flags.DEFINE_integer('svd_k', 20, 'Singular triplets per end (larger models).')
  flags.DEFINE_integer('chunk_size', 128, 'Basis vectors per forward-mode pass.')
  flags.DEFINE_string('output_dir', None, 'Default: runs/<config.name>/jacobian.')
  flags.mark_flag_as_required('config')
  app.run(main)
