r"""The empirical NTK :math:`\Theta(x_1, x_2) = J(x_1) J(x_2)^\top`, two ways.

* ``'jacobian'``: per-example Jacobians by ``vmap(jacrev)`` over blocks of
  ``batch_size`` inputs, contracted leaf by leaf. Memory ~ ``2 batch_size K P``
  numbers; fastest whenever it fits.
* ``'ntvp'``: NTK-vector products. For each output ``k`` of each example
  ``x2_j``, ``v = J(x2_j)^T e_k`` (one ``jax.vjp``), then ``J(x1) v`` (one
  ``jax.jvp`` through a linearization of the ``x1`` block). No Jacobian is
  stored: memory ~ a few parameter vectors plus one block's activations.

``'auto'`` lets `analysis.ntk.memory.plan` choose.
"""

import functools
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from analysis.ntk import memory
from dynamics import progress as progress_lib
from dynamics.types import ApplyFn, PyTree

_HIGHEST = jax.lax.Precision.HIGHEST


def inference_apply_fn(model: Any, model_state: Optional[PyTree] = None,
                       **kwargs) -> ApplyFn:
  """``(params, inputs) -> outputs`` of a Flax model in inference mode.

  BatchNorm then uses its running statistics, so an example's NTK row does not
  depend on which other examples share its block. (`dynamics.runs.Run.apply_fn`
  is the same function for a run's model.)
  """
  model_state = dict(model_state or {})

  def apply_fn(params, inputs):
    return model.apply({'params': params, **model_state}, inputs, train=False,
                       **kwargs)
  return apply_fn


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


def _fit_jacobian_block(apply_fn, params, x, b, n1, n2, trace_logits, limit,
                        may_switch):
  """The largest block size ``<= b`` whose Jacobians fit ``limit``, or 0.

  Measures the block function compiled for ``b`` examples with XLA's memory
  analysis (Jacobian outputs and temporaries, activations included); while it
  does not fit, shrinks ``b`` in proportion and measures again. Returns 0
  when not even one example fits and ``may_switch`` (the caller then uses
  NTK-vector products), else raises `memory.NTKMemoryError`. The block is
  then computed by the jitted function (any layout or sharding); the
  measurement is cached, so a probe pays it once.
  """
  key = (apply_fn, trace_logits, b, n1, n2, limit, may_switch,
         jax.tree.structure(params),
         tuple((np.shape(v), np.dtype(v.dtype)) for v in jax.tree.leaves(params)),
         x.shape[1:], np.dtype(x.dtype))
  if key in _FITTED:
    return _FITTED[key]
  jac_fn, _ = _jacobian_block_fns(apply_fn, trace_logits)
  k = memory.output_size(apply_fn, params, x)
  kernel_bytes = n1 * n2 * (1 if trace_logits else k * k) * memory.itemsize(params)
  while True:
    stats = _memory_of(jac_fn, params, _pad_blocks(x[:b], b)[0])
    per_block = (stats.output_size_in_bytes + stats.temp_size_in_bytes
                 if stats is not None else 0)
    # Two blocks of Jacobians are alive at once (rows and columns).
    need = kernel_bytes + per_block + (stats.output_size_in_bytes
                                       if stats is not None else 0)
    if need <= limit:
      break
    if b == 1:
      if not may_switch:
        raise memory.NTKMemoryError(
            f"empirical_ntk(method='jacobian') needs {memory.gib(need)} for "
            'even one example per block (Jacobians and activations, by '
            f"XLA's memory analysis), over the limit of {memory.gib(limit)}; "
            "use method='ntvp' or fewer outputs")
      b = 0
      break
    b = max(1, min(b - 1, int(b * 0.9 * (limit - kernel_bytes) / max(
        need - kernel_bytes, 1))))
  if len(_FITTED) > 256:
    _FITTED.clear()
  _FITTED[key] = b
  return b


_FITTED = {}


def _memory_of(fn, *args):
  """XLA's memory analysis of ``fn`` compiled for ``args`` (host-side, one
  device: the block's own needs)."""
  args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), args)
  return fn.lower(*args).compile().memory_analysis()


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
                  memory_limit: Optional[int] = None,
                  progress: bool = False) -> jax.Array:
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
    memory_limit: bytes allowed (None: ``default_memory_limit()``): the
      kernel, two blocks of Jacobians and the activations of computing them,
      as XLA's memory analysis of the compiled block reports them.
    progress: show a progress bar over the kernel's blocks.

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
  limit = (memory.default_memory_limit() if memory_limit is None
           else int(memory_limit))
  requested = method
  method, b = memory.plan(apply_fn, params, n1, n2, x1, method=method,
                          trace_logits=trace_logits, batch_size=batch_size,
                          memory_limit=limit)
  if method == 'jacobian':
    # The plan counts Jacobians, not activations: ask XLA what the compiled
    # block really needs and shrink the block (or switch method) to fit.
    b = _fit_jacobian_block(apply_fn, params, x1, b, n1, n2, trace_logits,
                            limit, may_switch=requested == 'auto')
    if b == 0:
      method, b = memory.plan(apply_fn, params, n1, n2, x1, method='ntvp',
                              trace_logits=trace_logits, memory_limit=limit)
  b1, b2 = min(b, n1), min(b, n2)
  blocks1, blocks2 = _pad_blocks(x1, b1), _pad_blocks(x2, b2)
  num_blocks = len(blocks1) * len(blocks2)
  bar = progress_lib.bar(num_blocks, f'NTK {n1}x{n2} ({method}, blocks of {b})',
                         enabled=progress and num_blocks > 1, mininterval=1.0)
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
        bar.update(1 + (i if symmetric and j == i else 0))
      rows.append(row)
  else:
    block_fn = _ntvp_block_fn(apply_fn, trace_logits)
    for i, xb1 in enumerate(blocks1):
      row = []
      for j, xb2 in enumerate(blocks2):
        row.append(None if symmetric and j < i else block_fn(params, xb1, xb2))
        bar.update(1)
      rows.append(row)
  bar.close()
  if symmetric:
    swap = (1, 0) if trace_logits else (1, 0, 3, 2)
    for i in range(len(rows)):
      for j in range(i):
        rows[i][j] = jnp.transpose(rows[j][i], swap)
  kernel = jnp.concatenate([jnp.concatenate(r, axis=1) for r in rows], axis=0)
  return kernel[:n1, :n2]
