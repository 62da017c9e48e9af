"""How large a model a Lanczos basis allows (`largest_model`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.lanczos import core
from analysis.lanczos.eigsh import default_basis_size, default_max_matvecs


def largest_model(memory_bytes: float, k: int = 20, dtype: Any = 'float32',
                  extra_vectors: int = 8) -> int:
  """The most parameters ``n`` whose top-``k`` Lanczos (`eigsh` with its
  defaults) fits in ``memory_bytes``: the basis of ``rows(k, n)`` vectors
  plus ``extra_vectors`` more (the parameters, the Lanczos vector, the
  product and the HVP's own intermediates, a few parameter-sized arrays;
  activations not counted), each of ``n`` entries of ``dtype``:

  .. math:: (\\mathrm{rows}(k, n) + \\mathrm{extra})\\, n\\, \\mathrm{bytes} \\le M.

  Example:
    >>> largest_model(16e9) > 10 ** 7
    True
  """
  size = np.dtype(dtype).itemsize

  def fits(n):
    cap = default_max_matvecs(k, n)
    rows = core.basis_rows(max(default_basis_size(k, cap, n), k + 2), n)
    return (rows + extra_vectors) * n * size <= memory_bytes

  lo, hi = 1, 1
  while fits(hi * 2):
    hi *= 2
  hi *= 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo
