"""How much memory an empirical NTK needs, and the plan that fits a limit.

`plan` picks ``empirical_ntk``'s method and block size, or raises
`NTKMemoryError` naming a ``batch_size`` (or method) that fits, before
anything is allocated.
"""

import os
from typing import Optional, Tuple

import jax
import numpy as np

from dynamics.types import ApplyFn, PyTree

METHODS = ('jacobian', 'ntvp', 'auto')


class NTKMemoryError(MemoryError):
  """A probe set too large for the memory limit; the message says what fits."""


def _num_params(params: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def output_size(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> int:
  """``K``: the number of outputs per example (every non-batch axis)."""
  out = jax.eval_shape(apply_fn, params, x[:1])
  return int(np.prod(out.shape[1:], dtype=np.int64))


def itemsize(params: PyTree) -> int:
  """Bytes per number of the widest parameter dtype."""
  return max(np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


def memory_estimate(num_params: int, num_outputs: int, n1: int, n2: int, *,
                    method: str, batch_size: int, trace_logits: bool = True,
                    itemsize: int = 4) -> int:
  """Bytes ``empirical_ntk`` needs (the kernel plus per-block buffers).

  Activations are not counted here: `empirical_ntk` asks XLA's memory
  analysis of the compiled block for them and shrinks the block to fit.

  Example:
    >>> memory_estimate(1000, 10, 64, 64, method='jacobian', batch_size=8)
    656384
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


def gib(n: float) -> str:
  return f'{n / 2 ** 30:.2f} GiB'


def _largest_fitting_batch(method, limit, p, k, n1, n2, trace, itemsize,
                           cap) -> int:
  """The largest block size <= cap within ``limit`` (0 if none)."""
  lo, hi = 0, cap
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if memory_estimate(p, k, n1, n2, method=method, batch_size=mid,
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

  ``'auto'`` takes ``'jacobian'`` with the largest block that fits
  ``memory_limit``, and ``'ntvp'`` when not even a block of 8 examples'
  Jacobians does.

  Raises:
    NTKMemoryError: the request does not fit ``memory_limit``; the message
      gives the estimate and the ``batch_size`` (or method) that would fit.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x @ w
    >>> plan(apply_fn, jnp.ones((3, 2)), 16, 16, jnp.ones((16, 3)))
    ('jacobian', 16)
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  limit = default_memory_limit() if memory_limit is None else int(memory_limit)
  p, k = _num_params(params), output_size(apply_fn, params, x)
  item = itemsize(params)
  n = max(n1, n2)
  est = lambda m, b: memory_estimate(p, k, n1, n2, method=m, batch_size=b,
                                     trace_logits=trace_logits, itemsize=item)
  kernel_only = est('ntvp', 1) - 3 * p * item - k * item
  if kernel_only > limit:
    raise NTKMemoryError(
        f'the {"traced" if trace_logits else "full"} NTK of {n1}x{n2} examples'
        f' with K={k} outputs alone needs {gib(kernel_only)}, over the memory'
        f' limit of {gib(limit)}; use fewer examples'
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
    hint = (f'pass batch_size={fit} (estimated {gib(est(method, fit))})'
            if fit >= 1 else
            "even batch_size=1 does not fit: use method='ntvp'"
            if method == 'jacobian' else 'use fewer examples')
    raise NTKMemoryError(
        f"empirical_ntk(method={method!r}) of {n1}x{n2} examples of a model "
        f'with P={p:,} parameters and K={k} outputs needs an estimated '
        f'{gib(need)} with batch_size={b} (Jacobian blocks of batch_size x K x'
        f' P numbers plus the kernel), over the memory limit of {gib(limit)};'
        f' {hint}.')
  return method, b
