"""Stochastic Lanczos quadrature: the spectral measure of an operator from a
few Lanczos runs, and its Gaussian-broadened density."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from analysis.lanczos.core import Matvec, run_lanczos, tridiagonal_eigh
from dynamics.types import PyTree


def slq_nodes(matvec: Matvec, params_like: PyTree, *, num_probes: int,
              num_iters: int, key: jax.Array, dtype: Any = None,
              progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Gauss quadrature nodes and weights of stochastic Lanczos quadrature.

  For each Gaussian probe ``v`` (normalized), ``m`` Lanczos steps from ``v``
  give ``T_m = S diag(theta) S^T``; then ``v^T f(A) v ~ sum_i tau_i f(theta_i)``
  with ``tau_i = S[0, i]^2``, exact for polynomials of degree < 2m. Averaged
  over probes, ``(theta, tau)`` is an estimate of the spectral measure
  ``(1/n) sum_i delta(lambda_i)``.

  Returns:
    ``(nodes (num_probes, m), weights (num_probes, m))``; each row of weights
    sums to 1.
  """
  nodes, weights = [], []
  for sub in jax.random.split(key, num_probes):
    run = run_lanczos(matvec, params_like, num_iters, key=sub, dtype=dtype,
                      progress=progress)
    theta, s = tridiagonal_eigh(run.alphas, run.betas)
    m = len(theta)
    # Pad to a common width with zero-weight nodes (a probe may stop early).
    nodes.append(np.pad(theta, (0, num_iters - m), constant_values=theta[-1]))
    weights.append(np.pad(s[0] ** 2, (0, num_iters - m)))
  return np.stack(nodes), np.stack(weights)


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                     sigma: float) -> np.ndarray:
  """``phi(t) = mean_probes sum_i tau_i N(t; theta_i, sigma^2)`` on ``grid``."""
  nodes = np.asarray(nodes, np.float64).reshape(-1)
  weights = np.asarray(weights, np.float64).reshape(-1)
  weights = weights / weights.sum()
  grid = np.asarray(grid, np.float64)
  z = (grid[:, None] - nodes[None, :]) / sigma
  return (np.exp(-0.5 * z ** 2) / (sigma * np.sqrt(2 * np.pi))) @ weights
