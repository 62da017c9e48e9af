r"""Products with the training Jacobian, the dense matrix, and its extreme
singular triplets."""

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from analysis import lanczos as lz
from analysis.jacobian import training
from dynamics.types import PyTree



class TrainingJacobian(NamedTuple):
  """Products with the training Jacobian at ``params_0`` (pytrees like it).

  Attributes:
    jvp: ``v -> J v`` (forward mode through the unrolled run).
    vjp: ``u -> J^T u`` (reverse mode, checkpointed).
  """
  jvp: Callable[[PyTree], PyTree]
  vjp: Callable[[PyTree], PyTree]


def training_jacobian_fn(train_fn: training.TrainFn, *, params_0: PyTree
                         ) -> TrainingJacobian:
  r"""Jacobian-vector products of the training map :math:`\theta_0 \mapsto \theta_T`.

  .. math::
     J = \frac{\partial \theta_T}{\partial \theta_0}
       = \prod_{t=T-1}^{0} \frac{\partial s_{t+1}}{\partial s_t}
         \Big|_{\theta\text{-block}}, \qquad s_t = (\theta_t, \text{opt state}_t).

  Args:
    train_fn: ``train_fn(params_0) -> params_T``, pure: a run's
      (``make_train_fn(run)``) or any ``lax.scan`` (use `unroll` for
      checkpointing).
    params_0: where to differentiate (``make_train_fn``'s second value for
      a run's initialization).

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
    >>> np.round(jvp(jnp.array([1.0, 1.0])), 6)   # (1 - 0.1)^3, (1 - 0.2)^3
    Array([0.729, 0.512], dtype=float32)

  References:
    Belrose & Scherlis, "Understanding Gradient Descent through the Training
    Jacobian", arXiv:2412.07003 (2024).
  """
  training.check_deterministic(train_fn, params_0)
  jvp = jax.jit(lambda v: jax.jvp(train_fn, (params_0,), (v,))[1])
  vjp = jax.jit(lambda u: jax.vjp(train_fn, params_0)[1](u)[0])
  return TrainingJacobian(jvp, vjp)


def training_jacobian(train_fn: training.TrainFn, *, params_0: PyTree,
                      chunk_size: int = 128, max_params: int = 20_000
                      ) -> jax.Array:
  """The dense training Jacobian ``(P, P)``: ``J[:, i] = J e_i``.

  Columns come from forward mode, ``vmap``-ed over chunks of ``chunk_size``
  basis vectors (the primal run is shared within a chunk); indices follow
  `jax.flatten_util.ravel_pytree` of ``params_0``.

  Args:
    train_fn, params_0: as in `training_jacobian_fn`.
    chunk_size: basis vectors per compiled forward-mode pass (memory ~
      ``chunk_size`` copies of the optimizer state and activations).
    max_params: refuse larger models (use `training_jacobian_svd`).

  Returns:
    ``J`` in the parameters' dtype.

  Example:
    >>> train_fn = lambda th: th - 0.5 * jnp.array([1.0, 3.0]) * th
    >>> training_jacobian(train_fn, params_0=jnp.ones(2))
    Array([[ 0.5,  0. ],
           [ 0. , -0.5]], dtype=float32)
  """
  training.check_deterministic(train_fn, params_0)
  flat_fn, flat0, _ = training.flat_train_fn(train_fn, params_0)
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


def training_jacobian_svd(train_fn: training.TrainFn, k: int, *,
                          params_0: PyTree, num_iters: Optional[int] = None,
                          key: Optional[jax.Array] = None) -> TrainingSVD:
  r"""Top and bottom ``k`` singular triplets by Lanczos on :math:`J^\top J`.

  Each Lanczos step costs one ``jvp`` and one ``vjp`` through the run. Ritz
  values :math:`\theta` of :math:`J^\top J` give :math:`\sigma = \sqrt\theta`,
  right vectors :math:`v`, and :math:`u = J v / \sigma`. Both ends of the
  spectrum converge; the bottom end (contracted directions) more slowly, so
  raise ``num_iters`` until it stabilizes.

  Args:
    train_fn, params_0: see `training_jacobian_fn`.
    k: triplets at each end.
    num_iters: Lanczos steps (default ``min(P, max(4 k, k + 40))``).
    key: start-vector key.

  Returns:
    A `TrainingSVD` (vectors flattened in ``ravel_pytree`` order).

  Example:
    >>> train_fn = lambda th: jnp.array([2.0, 1.0, 0.5]) * th
    >>> svd = training_jacobian_svd(train_fn, 1, params_0=jnp.ones(3))
    >>> np.round(np.asarray(svd.top), 4), np.round(np.asarray(svd.bottom), 4)
    (array([2.], dtype=float32), array([0.5], dtype=float32))
  """
  training.check_deterministic(train_fn, params_0)
  flat_fn, flat0, _ = training.flat_train_fn(train_fn, params_0)
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
  (``s > 1 + bulk_tol``) and contracted (``s < 1 - bulk_tol``) singular values.

  Example:
    >>> split = spectrum_split([0.5, 1.0, 1.001, 3.0])
    >>> split['bulk'], split['amplified'], split['contracted']
    (2, 1, 1)
  """
  s = np.asarray(singular_values, np.float64)
  bulk = np.abs(s - 1.0) <= bulk_tol
  amplified, contracted = s > 1.0 + bulk_tol, s < 1.0 - bulk_tol
  n = max(len(s), 1)
  return {'bulk_tol': bulk_tol, 'num': int(len(s)),
          'bulk': int(bulk.sum()), 'amplified': int(amplified.sum()),
          'contracted': int(contracted.sum()), 'bulk_fraction': bulk.sum() / n,
          'amplified_fraction': amplified.sum() / n,
          'contracted_fraction': contracted.sum() / n}
