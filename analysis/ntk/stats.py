r"""Statistics of NTKs: spectrum, label alignment, distances between kernels,
and the relative parameter change that goes with them (lazy vs rich)."""

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics.types import Batch, PyTree

_HIGHEST = jax.lax.Precision.HIGHEST


def _as_matrix(ntk: jax.Array) -> jax.Array:
  """``(N, N)`` as is; ``(N, N, K, K)`` as the ``(N K) x (N K)`` matrix."""
  if ntk.ndim == 2:
    return ntk
  if ntk.ndim == 4:
    n, m, k, l = ntk.shape
    return jnp.transpose(ntk, (0, 2, 1, 3)).reshape(n * k, m * l)
  raise ValueError(f'expected an N x N or N x N x K x K kernel, got {ntk.shape}')


def ntk_eigs(ntk: jax.Array, k: Optional[int] = None) -> jax.Array:
  """Eigenvalues of a symmetric NTK, largest first (the top ``k`` if given).

  A full kernel ``(N, N, K, K)`` is the ``N K x N K`` matrix
  :math:`[\\Theta_{ij}^{kl}]_{(ik),(jl)}`.

  Example:
    >>> ntk_eigs(jnp.array([[2., 1.], [1., 2.]]))
    Array([3., 1.], dtype=float32)
  """
  mat = _as_matrix(jnp.asarray(ntk))
  eigs = jnp.linalg.eigvalsh(0.5 * (mat + mat.T))[::-1]
  return eigs if k is None else eigs[:k]


def _targets_matrix(y: jax.Array, n: int, num_outputs: Optional[int]) -> jax.Array:
  """Targets as an ``(N, K)`` float matrix (integer labels one-hot)."""
  y = jnp.asarray(y)
  if y.shape[0] != n:
    raise ValueError(f'{y.shape[0]} targets for a kernel of {n} examples')
  if jnp.issubdtype(y.dtype, jnp.integer):
    per_example = int(np.prod(y.shape[1:], dtype=np.int64))  # T for (N, T) tokens.
    classes = (int(jnp.max(y)) + 1 if num_outputs is None
               else num_outputs // per_example)
    y = jax.nn.one_hot(y, classes)
  return y.reshape(n, -1).astype(jnp.result_type(float))


def kernel_alignment(ntk: jax.Array, y: jax.Array, *,
                     num_classes: Optional[int] = None) -> jax.Array:
  r"""Centered kernel-target alignment (Cortes, Mohri & Rostamizadeh, 2012).

  .. math::
     A(\Theta, Y) = \frac{\langle H \Theta H,\; Y_c Y_c^\top \rangle_F}
                         {\|H \Theta H\|_F\, \|Y_c Y_c^\top\|_F},
     \qquad H = I - \tfrac{1}{N} \mathbf{1}\mathbf{1}^\top,\; Y_c = H Y,

  in :math:`[-1, 1]`; 1 when the kernel is a multiple of the centered label
  kernel. For a full kernel the target is
  :math:`Y_{(ik),(jl)} = Y_{c,ik} Y_{c,jl}` and :math:`H` centers over
  examples only.

  Args:
    ntk: ``(N, N)`` traced or ``(N, N, K, K)`` full kernel.
    y: ``(N,)`` integer labels (one-hot encoded), or ``(N, K)`` / ``(N,)``
      real targets, or ``(N, T)`` token labels for ``K = T V`` outputs.
    num_classes: classes of integer labels (default: from the kernel for a
      full kernel, else ``max(y) + 1``).

  Returns:
    The alignment, a scalar.

  Example:
    >>> y = jnp.array([0, 0, 1, 1])
    >>> same_label = (y[:, None] == y[None, :]).astype(jnp.float32)
    >>> round(float(kernel_alignment(same_label, y)), 5)
    1.0
  """
  ntk = jnp.asarray(ntk)
  n = ntk.shape[0]
  outputs = ntk.shape[2] if ntk.ndim == 4 else num_classes
  yc = _targets_matrix(y, n, outputs)
  yc = yc - jnp.mean(yc, axis=0, keepdims=True)
  if ntk.ndim == 2:
    kc = ntk - jnp.mean(ntk, 0, keepdims=True)
    kc = kc - jnp.mean(kc, 1, keepdims=True)
    num = jnp.einsum('ij,ik,jk->', kc, yc, yc, precision=_HIGHEST)
    y_norm = jnp.linalg.norm(yc.T @ yc)
  else:
    if yc.shape[1] != ntk.shape[2]:
      raise ValueError(f'targets have {yc.shape[1]} outputs, kernel {ntk.shape[2]}')
    kc = ntk - jnp.mean(ntk, 0, keepdims=True)
    kc = kc - jnp.mean(kc, 1, keepdims=True)
    num = jnp.einsum('ijkl,ik,jl->', kc, yc, yc, precision=_HIGHEST)
    y_norm = jnp.sum(yc ** 2)
  return num / (jnp.linalg.norm(kc.ravel()) * y_norm)


def kernel_distance(ntk_a: jax.Array, ntk_b: jax.Array) -> jax.Array:
  r"""Kernel distance :math:`1 - \langle A, B\rangle_F / (\|A\|_F \|B\|_F)`.

  0 for kernels equal up to scale, 1 for orthogonal ones (Fort et al., 2020,
  "Deep learning versus kernel learning"). Computed as the equal
  :math:`\tfrac12\|A/\|A\| - B/\|B\|\|_F^2`, which keeps its precision for
  nearly equal kernels, where ``1 - cos`` rounds to 0 in float32.

  Example:
    >>> round(float(kernel_distance(jnp.eye(2), 3 * jnp.eye(2))), 6)
    0.0
    >>> round(float(kernel_distance(jnp.eye(2), jnp.array([[0., 1.], [1., 0.]]))), 6)
    1.0
  """
  a, b = jnp.ravel(ntk_a), jnp.ravel(ntk_b)
  diff = a / jnp.linalg.norm(a) - b / jnp.linalg.norm(b)
  return 0.5 * jnp.vdot(diff, diff)


def kernel_distance_np(a: np.ndarray, b: np.ndarray) -> float:
  """`kernel_distance` in float64 NumPy, as ``1 - cos``: exactly 0 for a
  kernel and itself (the probe's and the command's ``distance`` series)."""
  if a is b:
    return 0.0
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(1.0 - np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def relative_param_change(params_0: PyTree, params_t: PyTree) -> jax.Array:
  r""":math:`\|\theta_t - \theta_0\| / \|\theta_0\|` over all parameters.

  Example:
    >>> float(relative_param_change({'w': jnp.ones(4)}, {'w': 1.5 * jnp.ones(4)}))
    0.5
  """
  return (optax.tree.norm(optax.tree.sub(params_t, params_0))
          / optax.tree.norm(params_0))


def probe_examples(batches: Sequence[Batch], n: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """The first ``n`` ``(inputs, targets)`` of a list of batches.

  Raises:
    ValueError: the batches hold fewer than ``n`` examples.
  """
  inputs = np.concatenate([np.asarray(b['inputs']) for b in batches])[:n]
  targets = np.concatenate([np.asarray(b['targets']) for b in batches])[:n]
  if len(inputs) < n:
    raise ValueError(f'the probe batches hold {len(inputs)} examples; {n} asked')
  return inputs, targets
