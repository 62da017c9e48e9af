r"""Empirical neural tangent kernels and the lazy-vs-rich diagnostics built on them.

The empirical NTK of a network :math:`f(x; \theta) \in \mathbb{R}^K` is

.. math::
   \Theta(x_1, x_2) = J(x_1)\, J(x_2)^\top, \qquad
   J(x) = \partial f(x; \theta) / \partial \theta \in \mathbb{R}^{K \times P},

summed over *all* parameters. ``empirical_ntk`` returns either the full kernel
(``N1 x N2 x K x K``) or the kernel traced over the outputs,
:math:`\sum_k \Theta_{kk}` (``N1 x N2``). Every non-batch output axis counts as
an output: a transformer's ``(T, V)`` logits give ``K = T V``.

Relation to neural-tangents: its ``trace_axes`` *average* over the traced
axes, ours *sum*: ``ours_traced = K * nt_traced`` (``nt.empirical_ntk_fn(...,
trace_axes=(-1,))``). The full kernels are equal. neural-tangents no longer
imports on current JAX; this module is its replacement here.

Two implementations, equal up to rounding:

* ``'jacobian'``: per-example Jacobians by ``vmap(jacrev)`` over blocks of
  ``batch_size`` inputs, contracted leaf by leaf. Memory ~ ``2 batch_size K P``
  numbers; fastest whenever it fits.
* ``'ntvp'``: NTK-vector products. For each output ``k`` of each example
  ``x2_j``, ``v = J(x2_j)^T e_k`` (one ``jax.vjp``), then ``J(x1) v`` (one
  ``jax.jvp`` through a linearization of the ``x1`` block). No Jacobian is
  stored: memory ~ a few parameter vectors plus one block's activations.

``'auto'`` picks ``'jacobian'`` with the largest block that fits the memory
limit, and ``'ntvp'`` when not even one example's Jacobian does. Models with
BatchNorm: pass an inference-mode ``apply_fn`` (``inference_apply_fn`` or
``Context.apply_fn``), so that each example's output does not depend on the
rest of its batch.

Also here: ``ntk_eigs``, ``kernel_alignment``, ``kernel_distance``,
``relative_param_change``, the training-time ``NTKProbe`` and the command
``python -m analysis.ntk --workdir=DIR --steps=0,1000,5000 --num_examples=512``
(at the end of this file).
"""

import functools
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
METHODS = ('jacobian', 'ntvp', 'auto')
_HIGHEST = jax.lax.Precision.HIGHEST


class NTKMemoryError(MemoryError):
  """A probe set too large for the memory limit; the message says what fits."""


def inference_apply_fn(model: Any, model_state: Optional[PyTree] = None,
                       **kwargs) -> ApplyFn:
  """``(params, inputs) -> outputs`` of a Flax model in inference mode.

  BatchNorm then uses its running statistics, so an example's NTK row does not
  depend on which other examples share its block.
  """
  model_state = dict(model_state or {})

  def apply_fn(params, inputs):
    return model.apply({'params': params, **model_state}, inputs, train=False,
                       **kwargs)
  return apply_fn


# --------------------------------------------------------------------------
# Memory model
# --------------------------------------------------------------------------


def _num_params(params: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def _output_size(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> int:
  out = jax.eval_shape(apply_fn, params, x[:1])
  return int(np.prod(out.shape[1:], dtype=np.int64))


def _itemsize(params: PyTree) -> int:
  return max(np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


def memory_estimate(num_params: int, num_outputs: int, n1: int, n2: int, *,
                    method: str, batch_size: int, trace_logits: bool = True,
                    itemsize: int = 4) -> int:
  """Bytes ``empirical_ntk`` needs (the kernel plus per-block buffers).

  Activations are not counted: for the models here they are small next to
  ``K P`` Jacobian rows.
  """
  kernel = n1 * n2 * (1 if trace_logits else num_outputs ** 2) * itemsize
  if method == 'jacobian':
    block = 2 * batch_size * num_outputs * num_params * itemsize
  elif method == 'ntvp':
    block = 3 * num_params * itemsize + batch_size * num_outputs * itemsize
  else:
    raise ValueError(f'method must be jacobian | ntvp, got {method!r}')
  return int(kernel + block)


def default_memory_limit() -> int:
  """Half of the device's memory (accelerators) or of the free host memory."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return int(0.5 * stats['bytes_limit'])
  try:
    free = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    free = 8 * 2 ** 30
  return int(0.5 * free)


def _gib(n: float) -> str:
  return f'{n / 2 ** 30:.2f} GiB'


def _largest_fitting_batch(method, limit, num_params, k, n1, n2, trace, itemsize,
                           cap) -> int:
  """The largest block size <= cap within ``limit`` (0 if none)."""
  lo, hi = 0, cap
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if memory_estimate(num_params, k, n1, n2, method=method, batch_size=mid,
                       trace_logits=trace, itemsize=itemsize) <= limit:
      lo = mid
    else:
      hi = mid - 1
  return lo


def plan(apply_fn: ApplyFn, params: PyTree, n1: int, n2: int, x: jax.Array, *,
         method: str = 'auto', trace_logits: bool = True,
         batch_size: Optional[int] = None,
         memory_limit: Optional[int] = None) -> Tuple[str, int]:
  """The ``(method, batch_size)`` that ``empirical_ntk`` will use.

  Raises:
    NTKMemoryError: the request does not fit ``memory_limit``; the message
      gives the estimate and the ``batch_size`` (or method) that would fit.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  limit = default_memory_limit() if memory_limit is None else int(memory_limit)
  p, k = _num_params(params), _output_size(apply_fn, params, x)
  item = _itemsize(params)
  n = max(n1, n2)
  est = lambda m, b: memory_estimate(p, k, n1, n2, method=m, batch_size=b,
                                     trace_logits=trace_logits, itemsize=item)
  kernel_only = est('ntvp', 1) - 3 * p * item - k * item
  if kernel_only > limit:
    raise NTKMemoryError(
        f'the {"traced" if trace_logits else "full"} NTK of {n1}x{n2} examples'
        f' with K={k} outputs alone needs {_gib(kernel_only)}, over the memory'
        f' limit of {_gib(limit)}; use fewer examples'
        + ('' if trace_logits else ' or trace_logits=True'))
  if method == 'auto':
    if batch_size is not None:
      method = 'jacobian' if est('jacobian', batch_size) <= limit else 'ntvp'
    else:
      b = _largest_fitting_batch('jacobian', limit, p, k, n1, n2, trace_logits,
                                 item, n)
      # Tiny Jacobian blocks lose to NTK-vector products (no re-computation).
      if b >= min(n, 8):
        return 'jacobian', b
      b = _largest_fitting_batch('ntvp', limit, p, k, n1, n2, trace_logits,
                                 item, n)
      return 'ntvp', max(b, 1)
  b = n if batch_size is None else int(batch_size)
  if b < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  need = est(method, b)
  if need > limit:
    fit = _largest_fitting_batch(method, limit, p, k, n1, n2, trace_logits,
                                 item, n)
    hint = (f'pass batch_size={fit} (estimated {_gib(est(method, fit))})'
            if fit >= 1 else
            "even batch_size=1 does not fit: use method='ntvp'"
            if method == 'jacobian' else 'use fewer examples')
    raise NTKMemoryError(
        f"empirical_ntk(method={method!r}) of {n1}x{n2} examples of a model "
        f'with P={p:,} parameters and K={k} outputs needs an estimated '
        f'{_gib(need)} with batch_size={b} (Jacobian blocks of batch_size x K x'
        f' P numbers plus the kernel), over the memory limit of {_gib(limit)};'
        f' {hint}.')
  return method, b


# --------------------------------------------------------------------------
# The two implementations, block by block
# --------------------------------------------------------------------------


def _per_example_fn(apply_fn: ApplyFn):
  """``(params, x_single) -> flat outputs (K,)``."""
  def f(params, x):
    return apply_fn(params, x[None]).reshape(-1)
  return f


def _block_jacobian(apply_fn, params, x_block):
  """Leaves of shape ``(b, K, leaf_size)``: per-example Jacobians."""
  jac = jax.vmap(jax.jacrev(_per_example_fn(apply_fn)), (None, 0))(params, x_block)
  return [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree.leaves(jac)]


def _contract(jac1, jac2, trace_logits):
  eq = 'ikp,jkp->ij' if trace_logits else 'ikp,jlp->ijkl'
  return sum(jnp.einsum(eq, a, b, precision=_HIGHEST) for a, b in zip(jac1, jac2))


# Cached by apply_fn identity so that repeated calls (benchmarks, a probe with
# a fixed apply_fn) reuse their compilations.
@functools.lru_cache(maxsize=16)
def _jacobian_block_fns(apply_fn, trace_logits):
  jac = jax.jit(lambda p, x: _block_jacobian(apply_fn, p, x))
  contract = jax.jit(lambda a, b: _contract(a, b, trace_logits))
  return jac, contract


@functools.lru_cache(maxsize=16)
def _ntvp_block_fn(apply_fn, trace_logits):
  """``(params, x1_block, x2_block) -> kernel block`` without any Jacobian."""
  single = _per_example_fn(apply_fn)

  def block(params, x1, x2):
    b1 = x1.shape[0]
    f1 = lambda p: apply_fn(p, x1).reshape(b1, -1)
    _, jvp1 = jax.linearize(f1, params)  # Residuals of the x1 block, once.

    def column_group(xj):
      out, vjp_j = jax.vjp(lambda p: single(p, xj), params)
      k = out.shape[0]

      def column(kk):
        (v,) = vjp_j(jax.nn.one_hot(kk, k, dtype=out.dtype))
        return jvp1(v)                                   # (b1, K): J1 J2^T e_k

      return jax.lax.map(column, jnp.arange(k))          # (K2, b1, K1)

    cols = jax.lax.map(column_group, x2)                 # (b2, K2, b1, K1)
    if trace_logits:
      return jnp.einsum('jkik->ij', cols)
    return jnp.transpose(cols, (2, 0, 3, 1))             # (b1, b2, K1, K2)

  return jax.jit(block)


def _pad_blocks(x: jax.Array, b: int) -> List[jax.Array]:
  """Blocks of ``b`` rows; the last is padded (with copies of row 0) so one
  compiled block function serves them all."""
  n = x.shape[0]
  pad = (-n) % b
  if pad:
    x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)], axis=0)
  return [x[i:i + b] for i in range(0, n + pad, b)]


def empirical_ntk(apply_fn: ApplyFn, params: PyTree, x1: jax.Array,
                  x2: Optional[jax.Array] = None, *, method: str = 'auto',
                  trace_logits: bool = True, batch_size: Optional[int] = None,
                  memory_limit: Optional[int] = None) -> jax.Array:
  r"""The empirical NTK :math:`\Theta(x_1, x_2) = J(x_1) J(x_2)^\top`.

  .. math::
     \Theta_{ij}^{kl} = \sum_{p} \frac{\partial f_k(x_{1,i})}{\partial \theta_p}
                        \frac{\partial f_l(x_{2,j})}{\partial \theta_p},
     \qquad \text{traced: } \sum_k \Theta_{ij}^{kk}.

  Traced kernels *sum* over outputs; neural-tangents' ``trace_axes`` average
  (ours = ``K`` x theirs).

  Args:
    apply_fn: ``(params, inputs) -> outputs`` with a leading batch axis, in
      inference mode (see ``inference_apply_fn``); each example's output must
      depend on that example only.
    params: the parameters (all of them are differentiated).
    x1: ``(N1, ...)`` inputs.
    x2: ``(N2, ...)`` inputs; None for :math:`\Theta(x_1, x_1)` (symmetric:
      only blocks on and above the diagonal are computed).
    method: 'jacobian', 'ntvp' or 'auto' (see the module docstring).
    trace_logits: sum over the output dimension (``N1 x N2``) or keep it
      (``N1 x N2 x K x K``).
    batch_size: examples per block (None: as many as fit; for an explicit
      method, all of them).
    memory_limit: bytes allowed (None: ``default_memory_limit()``).

  Returns:
    The kernel, in the dtype of ``params``.

  Raises:
    NTKMemoryError: the request exceeds ``memory_limit``; the message gives
      the estimate and a ``batch_size`` that fits.

  Example:
    >>> x = jnp.eye(3)
    >>> apply_fn = lambda w, x: x @ w               # linear model, K = 2
    >>> empirical_ntk(apply_fn, jnp.ones((3, 2)), x)   # = K * X X^T
    Array([[2., 0., 0.],
           [0., 2., 0.],
           [0., 0., 2.]], dtype=float32)
  """
  x1 = jnp.asarray(x1)
  symmetric = x2 is None
  x2 = x1 if symmetric else jnp.asarray(x2)
  n1, n2 = x1.shape[0], x2.shape[0]
  method, b = plan(apply_fn, params, n1, n2, x1, method=method,
                   trace_logits=trace_logits, batch_size=batch_size,
                   memory_limit=memory_limit)
  b1, b2 = min(b, n1), min(b, n2)
  blocks1, blocks2 = _pad_blocks(x1, b1), _pad_blocks(x2, b2)
  rows = []
  if method == 'jacobian':
    jac_fn, contract = _jacobian_block_fns(apply_fn, trace_logits)
    jac2_cache = {}
    for i, xb1 in enumerate(blocks1):
      j1 = jac_fn(params, xb1)
      row = []
      for j, xb2 in enumerate(blocks2):
        if symmetric and j < i:
          row.append(None)           # Filled from the transpose below.
          continue
        if symmetric and j == i:
          j2 = j1
        elif len(blocks2) == 1:
          j2 = jac2_cache.setdefault(0, jac_fn(params, xb2))
        else:
          j2 = jac_fn(params, xb2)   # Recomputed: bounded memory (see docs).
        row.append(contract(j1, j2))
      rows.append(row)
  else:
    block_fn = _ntvp_block_fn(apply_fn, trace_logits)
    for i, xb1 in enumerate(blocks1):
      rows.append([None if symmetric and j < i else block_fn(params, xb1, xb2)
                   for j, xb2 in enumerate(blocks2)])
  if symmetric:
    swap = (1, 0) if trace_logits else (1, 0, 3, 2)
    for i in range(len(rows)):
      for j in range(i):
        rows[i][j] = jnp.transpose(rows[j][i], swap)
  kernel = jnp.concatenate([jnp.concatenate(r, axis=1) for r in rows], axis=0)
  return kernel[:n1, :n2]


# --------------------------------------------------------------------------
# Kernel statistics
# --------------------------------------------------------------------------


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
  """
  a, b = jnp.ravel(ntk_a), jnp.ravel(ntk_b)
  diff = a / jnp.linalg.norm(a) - b / jnp.linalg.norm(b)
  return 0.5 * jnp.vdot(diff, diff)


def relative_param_change(params_0: PyTree, params_t: PyTree) -> jax.Array:
  r""":math:`\|\theta_t - \theta_0\| / \|\theta_0\|` over all parameters."""
  return (optax.tree.norm(optax.tree.sub(params_t, params_0))
          / optax.tree.norm(params_0))


# --------------------------------------------------------------------------
# Training-time probe
# --------------------------------------------------------------------------


def probe_examples(batches: Sequence[Dict[str, Any]], n: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """The first ``n`` ``(inputs, targets)`` of a list of batches."""
  inputs = np.concatenate([np.asarray(b['inputs']) for b in batches])[:n]
  targets = np.concatenate([np.asarray(b['targets']) for b in batches])[:n]
  if len(inputs) < n:
    raise ValueError(f'the probe batches hold {len(inputs)} examples; {n} asked')
  return inputs, targets


def _distance_np(a: np.ndarray, b: np.ndarray) -> float:
  """``kernel_distance`` in float64 NumPy: exactly 0 for a kernel and itself."""
  if a is b:
    return 0.0
  return float(1.0 - np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class NTKProbe:
  """Logs NTK statistics on a fixed probe set every ``config.analysis.ntk_every``.

  Called as ``probe(state, ctx)`` by ``train_and_evaluate``; returns
  ``ntk_top_eig`` (largest eigenvalue of the traced kernel), ``ntk_trace``,
  ``ntk_alignment`` (centered alignment with the probe labels),
  ``ntk_distance_init`` (kernel distance to the kernel at the first call, i.e.
  initialization) and ``ntk_velocity`` (kernel distance to the previous call's
  kernel, per step elapsed; 0 at the first call).
  """

  def __init__(self, config: Any):
    self.every = int(config.analysis.ntk_every)
    self.num_examples = int(config.analysis.ntk_num_examples)
    self._init: Optional[np.ndarray] = None
    self._prev: Optional[Tuple[int, np.ndarray]] = None
    self._apply_fn: Optional[ApplyFn] = None

  def __call__(self, state: Any, ctx: Any) -> Dict[str, float]:
    per_batch = max(1, int(ctx.dataset.batch_size))
    batches = ctx.probe_batches(math.ceil(self.num_examples / per_batch))
    inputs, targets = probe_examples(batches, self.num_examples)
    if self._apply_fn is None or state.model_state:
      # Stateless models keep one apply_fn, hence one compilation, for the run.
      self._apply_fn = ctx.apply_fn(state.model_state)
    apply_fn = self._apply_fn
    ntk = empirical_ntk(apply_fn, state.params, jnp.asarray(inputs))
    k = _output_size(apply_fn, state.params, jnp.asarray(inputs))
    step = int(state.step)
    ntk_np = np.asarray(jax.device_get(ntk), np.float64)
    if self._init is None:
      self._init = ntk_np
    velocity = 0.0
    if self._prev is not None and step > self._prev[0]:
      velocity = _distance_np(self._prev[1], ntk_np) / (step - self._prev[0])
    self._prev = (step, ntk_np)
    return {
        'ntk_top_eig': float(np.linalg.eigvalsh(ntk_np)[-1]),
        'ntk_trace': float(np.trace(ntk_np)),
        'ntk_alignment': float(kernel_alignment(ntk_np, targets, num_classes=k)),
        'ntk_distance_init': _distance_np(self._init, ntk_np),
        'ntk_velocity': velocity,
    }


# --------------------------------------------------------------------------
# Command: NTK statistics of a run's checkpoints
# --------------------------------------------------------------------------


def analyze_checkpoints(workdir: str, steps: Optional[Sequence[int]] = None, *,
                        num_examples: int = 512, num_eigs: int = 50,
                        method: str = 'auto', batch_size: Optional[int] = None
                        ) -> Dict[str, Any]:
  """NTK statistics of ``workdir``'s checkpoints on a fixed held-out probe set.

  Returns a JSON-able dict: ``steps``; per step the top ``num_eigs``
  eigenvalues, the trace, the label alignment, the kernel distance to the
  first step's kernel and the relative parameter change from the first step;
  and ``distance_matrix`` (kernel distances between all pairs of steps).
  """
  from dynamics import checkpoint as checkpoint_lib
  from dynamics import train as train_lib
  available = checkpoint_lib.available_steps(workdir)
  steps = list(available if steps is None else steps)
  # Step 0 is the run's initialization (deterministic in config.seed), which
  # the training loop does not checkpoint.
  missing = [s for s in steps if s not in available and s != 0]
  if missing:
    raise ValueError(f'no checkpoints at steps {missing} in {workdir}; '
                     f'available: {available}')
  config = checkpoint_lib.load_config(workdir)
  parts = train_lib.build(config)
  per_batch = max(1, int(parts.dataset.batch_size))
  batches = [parts.dataset.eval_batch(10_000 + i)
             for i in range(math.ceil(num_examples / per_batch))]
  inputs, targets = probe_examples(batches, num_examples)
  kernels, params, records = [], [], []
  for step in steps:
    if step in available:
      _, state = checkpoint_lib.load_checkpoint(workdir, step)
    else:
      state = train_lib.init_state(config, parts)
    apply_fn = inference_apply_fn(parts.model, state.model_state)
    kernel = np.asarray(empirical_ntk(apply_fn, state.params, jnp.asarray(inputs),
                                      method=method, batch_size=batch_size),
                        np.float64)
    k_out = _output_size(apply_fn, state.params, jnp.asarray(inputs[:1]))
    kernels.append(kernel)
    params.append(state.params)
    eigs = np.linalg.eigvalsh(kernel)[::-1]
    records.append({
        'step': int(step), 'eigenvalues': eigs[:num_eigs].tolist(),
        'trace': float(np.trace(kernel)),
        'alignment': float(kernel_alignment(kernel, targets, num_classes=k_out)),
        'distance_from_first': _distance_np(kernels[0], kernel),
        'relative_param_change': float(relative_param_change(params[0], state.params)),
    })
  dist = [[_distance_np(a, b) for b in kernels] for a in kernels]
  return {'workdir': os.path.abspath(workdir), 'num_examples': num_examples,
          'steps': steps, 'per_step': records, 'distance_matrix': dist}


def plot_report(report: Dict[str, Any], path: str) -> None:
  """Spectrum per step, alignment over training, distance matrix: one PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  cmap = plt.get_cmap('viridis')
  n = len(report['steps'])
  for i, rec in enumerate(report['per_step']):
    eig = np.clip(np.asarray(rec['eigenvalues']), 1e-12, None)
    axes[0].loglog(np.arange(1, len(eig) + 1), eig, color=cmap(i / max(n - 1, 1)),
                   label=f"step {rec['step']}")
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str]) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  steps = None if not f.steps else [int(s) for s in f.steps.split(',')]
  report = analyze_checkpoints(f.workdir, steps, num_examples=f.num_examples,
                               num_eigs=f.num_eigs, method=f.method,
                               batch_size=f.batch_size)
  out = f.output_dir or os.path.join(f.workdir, 'ntk')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'ntk.json'), 'w') as fh:
    json.dump(report, fh, indent=1)
  plot_report(report, os.path.join(out, 'ntk.png'))
  for rec in report['per_step']:
    print(f"step {rec['step']:>7}: top eig {rec['eigenvalues'][0]:.4g}  trace "
          f"{rec['trace']:.4g}  alignment {rec['alignment']:.3f}  distance "
          f"from first {rec['distance_from_first']:.3f}  rel. param change "
          f"{rec['relative_param_change']:.3f}")
  print(f'wrote {out}/ntk.json and {out}/ntk.png')


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Run directory (with checkpoints).')
  flags.DEFINE_string('steps', '', 'Comma-separated checkpoint steps (default: all).')
  flags.DEFINE_integer('num_examples', 512, 'Held-out probe examples.')
  flags.DEFINE_integer('num_eigs', 50, 'Eigenvalues kept per step.')
  flags.DEFINE_enum('method', 'auto', list(METHODS), 'NTK implementation.')
  flags.DEFINE_integer('batch_size', None, 'Examples per block (default: what fits).')
  flags.DEFINE_string('output_dir', None, 'Default: WORKDIR/ntk.')
  flags.mark_flag_as_required('workdir')
  app.run(main)
