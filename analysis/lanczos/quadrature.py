"""Stochastic Lanczos quadrature: the spectral measure of an operator from a
batch of Lanczos runs, and its Gaussian-broadened density."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp  # pylint: disable=unused-import (examples)
import numpy as np

from analysis.lanczos import core, space as space_lib, trees
from dynamics import progress as progress_lib
from dynamics.types import PyTree


class SLQResult(NamedTuple):
  """What `slq_nodes` returns.

  Attributes:
    nodes: ``(num_probes, m)`` Gauss quadrature nodes (Ritz values).
    weights: ``(num_probes, m)`` their weights; each row sums to 1.
    num_steps: Lanczos steps per probe ``m``.
    change: L1 distance between the broadened densities of the last two
      checks (None without ``tol``).
    converged: ``change <= tol`` (True without ``tol``).
  """
  nodes: np.ndarray
  weights: np.ndarray
  num_steps: int
  change: float | None
  converged: bool


def _nodes(alphas: np.ndarray, betas: np.ndarray, m: int):
  theta, s = core.tridiagonal_eigh(alphas[:m], betas[:m - 1])
  return theta, s[0] ** 2


def _quadrature(alphas, betas, m):
  nodes, weights = zip(*[_nodes(a, b, m) for a, b in zip(alphas, betas)])
  return np.stack(nodes), np.stack(weights)


def broadening(nodes: np.ndarray, sigma: float | None) -> float:
  """``sigma``, or 1% of the nodes' range (the default broadening)."""
  if sigma is not None:
    return float(sigma)
  lo, hi = float(np.min(nodes)), float(np.max(nodes))
  return max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))


def density_change(old, new, sigma: float | None, num_grid: int = 512) -> float:
  """L1 distance between two quadratures' broadened densities (0 to 2)."""
  sigma = broadening(new[0], sigma)
  lo = min(old[0].min(), new[0].min()) - 6 * sigma
  hi = max(old[0].max(), new[0].max()) + 6 * sigma
  grid = np.linspace(lo, hi, num_grid)
  diff = np.abs(gaussian_density(*old, grid, sigma)
                - gaussian_density(*new, grid, sigma))
  return float(np.trapezoid(diff, grid))


def slq_nodes(matvec: core.Matvec, params_like: PyTree, *, num_probes: int,
              num_iters: int, key: jax.Array, dtype: Any = None,
              batch_size: int | None = None, tol: float | None = None,
              sigma: float | None = None, check_every: int | None = None,
              mask: PyTree | None = None, dim: int | None = None,
              progress: bool = False) -> SLQResult:
  """Gauss quadrature nodes and weights of stochastic Lanczos quadrature.

  For each random sign probe ``v`` (normalized), ``m`` Lanczos steps from ``v``
  give ``T_m = S diag(theta) S^T``; then ``v^T f(A) v ~ sum_i tau_i f(theta_i)``
  with ``tau_i = S[0, i]^2``, exact for polynomials of degree < 2m. Averaged
  over probes, ``(theta, tau)`` is an estimate of the spectral measure
  ``(1/n) sum_i delta(lambda_i)``.

  The probes run together, ``batch_size`` at a time (default: all), in one
  compiled loop that applies the operator to the whole batch at once
  (``vmap``); ``batch_size=1`` runs them one after another. With ``tol``,
  every ``check_every`` steps the batch's density broadened by ``sigma`` is
  compared with the previous check's; the run stops once they differ by at
  most ``tol`` in L1 (or after ``num_iters`` steps).

  Args:
    matvec, params_like, key, dtype: as in `analysis.lanczos.eigsh`.
    num_probes: random probe vectors.
    num_iters: Lanczos steps per probe (the cap with ``tol``; at most the
      dimension).
    batch_size: probes per compiled batch.
    tol: L1 change of the broadened density at which to stop (None: run
      ``num_iters`` steps).
    sigma: the broadening of that check (None: 1% of the nodes' range).
    check_every: steps between checks (default: a quarter of
      ``num_iters``, between 5 and 20).
    mask, dim: a subspace (block), as in `analysis.lanczos.eigsh`.
    progress: show a progress bar over products.

  Returns:
    An `SLQResult`.

  Example:
    >>> a = jnp.diag(jnp.array([1.0, 2.0, 4.0]))
    >>> out = slq_nodes(lambda v: a @ v, jnp.zeros(3), num_probes=2,
    ...                 num_iters=3, key=jax.random.PRNGKey(0))
    >>> np.round(np.sort(out.nodes[0]), 4), np.round(out.weights.sum(axis=1), 6)
    (array([1., 2., 4.]), array([1., 1.]))

  References:
    Lin, Saad & Yang, "Approximating Spectral Densities of Large Matrices"
    (SIAM Review 2016).
  """
  dtype = trees.vector_dtype(params_like, dtype)
  n = trees.size(params_like) if dim is None else int(dim)
  m = int(min(num_iters, n))
  if m < 1 or num_probes < 1:
    raise ValueError(f'num_iters ({num_iters}) and num_probes ({num_probes}) '
                     'must be >= 1')
  batch = num_probes if batch_size is None else max(1, min(batch_size,
                                                          num_probes))
  if check_every is None:
    check_every = max(5, min(20, m // 4))
  rows = core.basis_rows(m, n)
  space = space_lib.make_space(matvec, params_like, dtype, mask, n)
  space = space._replace(shardings=None)  # Batched probes: default layout.
  kwargs = space_lib.solver_kwargs(space)
  mask_args = (space.like if mask is None else space.mask,
               np.bool_(mask is not None))
  bar = progress_lib.bar(num_probes * m, 'SLQ products', enabled=progress,
                         leave=False)
  results, changes, steps = [], [], []
  for lo in range(0, num_probes, batch):
    take = min(batch, num_probes - lo)
    if batch == 1:
      state = core.start(space.like, key, space.like, np.bool_(False),
                         *mask_args, np.uint32(lo), rows=rows,
                         dtype=dtype.name)
      extend, refresh = core.extend, core.refresh
    else:  # The last batch is padded: one compiled shape.
      salts = np.arange(lo, lo + batch, dtype=np.uint32)
      state = core.start_batch(space.like, key, salts, *mask_args, rows=rows,
                               dtype=dtype.name)
      extend, refresh = core.extend_batch, core.refresh_batch
    j, previous, change = 0, None, None
    while j < m:
      stop = m if tol is None else min(m, j + check_every)
      state = extend(space.op, state, np.int32(stop), **kwargs)
      bad = np.atleast_1d(np.asarray(state.nonfinite_at))
      if np.any(bad >= 0):
        raise FloatingPointError(
            f'non-finite operator (Hessian-vector) product at SLQ step '
            f'{int(bad[bad >= 0][0]) + 1} of probe {lo + 1}; stopping.')
      reached = int(np.min(np.asarray(state.j)))
      if reached < stop:  # Some probes met an invariant subspace.
        state = refresh(state)
        continue
      bar.update(take * (stop - j))
      j = stop
      a, b = jax.device_get((state.alphas, state.betas))
      a = np.asarray(a, np.float64).reshape(-1, rows)[:take]
      b = np.asarray(b, np.float64).reshape(-1, rows)[:take]
      current = _quadrature(a, b, j)
      if tol is not None and previous is not None:
        change = density_change(previous, current, sigma)
        if change <= tol:
          break
      previous = current
    results.append(current)
    changes.append(change)
    steps.append(j)
  bar.close()
  width = max(steps)
  widen = lambda x, mode: np.pad(x, ((0, 0), (0, width - x.shape[1])),
                                 mode=mode)
  # Zero-weight padding nodes repeat the last node (extremes unchanged).
  nodes = np.concatenate([widen(r[0], 'edge') for r in results])
  weights = np.concatenate([widen(r[1], 'constant') for r in results])
  if width >= n:  # The Krylov spaces are complete: the quadrature is exact.
    changes = [0.0 if c is None else c for c in changes]
  known = [c for c in changes if c is not None]
  change = max(known) if known else None
  converged = tol is None or width >= n or (change is not None and
                                             change <= tol)
  return SLQResult(nodes, weights, width, change, converged)


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                     sigma: float) -> np.ndarray:
  """``phi(t) = mean_probes sum_i tau_i N(t; theta_i, sigma^2)`` on ``grid``.

  Example:
    >>> grid = np.linspace(-1, 1, 2001)
    >>> phi = gaussian_density(np.array([[0.0]]), np.array([[1.0]]), grid, 0.1)
    >>> round(float(np.trapezoid(phi, grid)), 6)
    1.0
  """
  nodes = np.asarray(nodes, np.float64).reshape(-1)
  weights = np.asarray(weights, np.float64).reshape(-1)
  weights = weights / weights.sum()
  grid = np.asarray(grid, np.float64)
  z = (grid[:, None] - nodes[None, :]) / sigma
  return (np.exp(-0.5 * z ** 2) / (sigma * np.sqrt(2 * np.pi))) @ weights
