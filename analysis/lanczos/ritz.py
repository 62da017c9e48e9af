"""Ritz pairs of a Lanczos run, their residual estimates, and the next chunk
(helpers of the host-driven loop, `analysis.lanczos.host`; the on-device
loop, `analysis.lanczos.device`, traces the same rules)."""

from __future__ import annotations

import math

import numpy as np


def wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  """Indices of the ``k`` wanted Ritz values of an ascending ``theta``."""
  if which == 'LA':
    return np.arange(len(theta) - k, len(theta))
  if which == 'SA':
    return np.arange(k)
  return np.sort(np.argsort(np.abs(theta), kind='stable')[len(theta) - k:])


def ritz(alphas, betas, proj, j: int):
  """Ascending Ritz values, their coordinates ``(j, j)`` and ``beta_j``, from
  the tridiagonal ``(alphas, betas)`` or (after thick restarts) ``proj``."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  if proj is not None:
    proj = np.asarray(proj, np.float64)[:j, :j]
    theta, s = scipy.linalg.eigh(0.5 * (proj + proj.T), driver='evr')
    beta = float(np.asarray(betas)[j - 1])
  else:
    alphas = np.asarray(alphas, np.float64)[:j]
    betas = np.asarray(betas, np.float64)[:j]
    beta = float(betas[j - 1])
    if j == 1:
      theta, s = alphas.copy(), np.ones((1, 1))
    else:
      theta, s = scipy.linalg.eigh_tridiagonal(alphas, betas[:j - 1])
  return theta, s, beta


def estimates(s: np.ndarray, beta: float, cuts: np.ndarray,
               j: int) -> np.ndarray:
  """Lanczos residual estimates of every Ritz pair: ``|beta_j s_j|`` and the
  couplings dropped inside the basis (``cuts``), in quadrature."""
  sq = (beta * s[j - 1]) ** 2
  cuts = np.asarray(cuts, np.float64)[:j]
  rows = np.flatnonzero(cuts)
  if rows.size:
    sq = sq + np.sum((cuts[rows, None] * s[rows]) ** 2, axis=0)
  return np.sqrt(sq)


def next_chunk(history, j: int, tol: float) -> int:
  """Products to run before the next check: the residuals' recent rate of
  decrease, extrapolated to the tolerance (they fall about geometrically)."""
  if tol <= 0:
    return max(4, j)
  if len(history) >= 2:
    (t0, r0), (t1, r1) = history[-2], history[-1]
    slope = (r1 - r0) / max(t1 - t0, 1)
    if slope < 0 and r1 > 0:
      return int(np.clip(math.ceil(0.8 * r1 / -slope), 1, max(4, j)))
  return max(2, j // 2)
