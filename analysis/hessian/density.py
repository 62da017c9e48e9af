r"""The whole Hessian spectrum at once: its density (stochastic Lanczos
quadrature, `spectral_density`) and its trace (Hutchinson, `trace`)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import lanczos as lz
from analysis.hessian import operators
from dynamics.types import Batch, LossFn, PyTree


def spectral_density(loss_fn: LossFn, params: PyTree,
                     batches: Iterable[Batch], *, num_probes: int = 10,
                     num_iters: int = 80, grid: Any = 2001,
                     sigma: float | None = None, key: jax.Array | None = None,
                     dtype: Any = None, mask: Any = None,
                     kind: str = 'hessian', model_fn: Callable | None = None,
                     output_loss_fn: Callable | None = None,
                     return_info: bool = False, progress: bool = False):
  r"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

  .. math::
     \phi_\sigma(t) = \frac{1}{n_v} \sum_{l=1}^{n_v} \sum_{i=1}^{m}
       \tau_i^{(l)}\, \mathcal{N}(t;\, \theta_i^{(l)}, \sigma^2)
     \approx \frac{1}{n} \sum_{j=1}^{n} \mathcal{N}(t;\, \lambda_j, \sigma^2),

  with :math:`(\theta^{(l)}, \tau^{(l)})` the Gauss quadrature nodes and
  weights of ``m`` Lanczos steps from the ``l``-th Gaussian probe (see
  `analysis.lanczos.slq_nodes`). The density integrates to one and its
  moments are unbiased estimates of :math:`\mathrm{tr}(H^p)/n`, broadened by
  ``sigma`` (the second moment gains :math:`\sigma^2`).

  Args:
    loss_fn, params, batches, key, dtype, mask, kind, model_fn,
      output_loss_fn: as in `top_eigenpairs`.
    num_probes: random probe vectors :math:`n_v`.
    num_iters: Lanczos steps per probe ``m`` (one HVP each).
    grid: number of grid points (spanning the nodes with a ``6 sigma``
      margin, so the density integrates to 1 on it) or an explicit grid.
    sigma: Gaussian broadening (default: 1% of the nodes' range).
    return_info: also return ``{'nodes', 'weights', 'num_hvps', 'sigma'}``.
    progress: show a progress bar over HVPs.

  Returns:
    ``(grid (g,), density (g,))`` as NumPy float64 arrays.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)    # eigenvalues 1, 3
    >>> grid, density, info = spectral_density(
    ...     loss, jnp.zeros(2), [jnp.array([1., 3.])], num_probes=4,
    ...     num_iters=2, sigma=0.1, return_info=True)
    >>> np.round(np.sort(info['nodes'][0]), 4)   # n steps: the eigenvalues
    array([1., 3.])
    >>> round(float(np.trapezoid(density, grid)), 3)
    1.0

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
    via Hessian Eigenvalue Density" (ICML 2019); Lin, Saad & Yang,
    "Approximating Spectral Densities of Large Matrices" (2016).
  """
  op = operators.make_operator(loss_fn, params, batches, mask=mask, kind=kind,
                               model_fn=model_fn, output_loss_fn=output_loss_fn)
  num_iters = min(num_iters, op.dim)
  with lz.progress_bar(num_probes * num_iters, 'SLQ HVPs', progress):
    nodes, weights = lz.slq_nodes(op.matvec, op.like, num_probes=num_probes,
                                  num_iters=num_iters,
                                  key=operators.default_key(key), dtype=dtype,
                                  progress=progress)
  lo, hi = float(nodes.min()), float(nodes.max())
  if sigma is None:
    sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
  if np.ndim(grid) == 0:
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, int(grid))
  grid = np.asarray(grid, np.float64)
  density = lz.gaussian_density(nodes, weights, grid, sigma)
  if return_info:
    return grid, density, {'nodes': nodes, 'weights': weights, 'sigma': sigma,
                           'num_hvps': num_probes * num_iters}
  return grid, density


@functools.partial(jax.jit, static_argnames=('num_probes',))
def _hutchinson_jit(op, like, key, *, num_probes):
  flat, unravel = ravel_pytree(like)

  def quadratic_form(probe_key):
    z = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
    hz, _ = ravel_pytree(op(unravel(z)))
    return jnp.vdot(z, hz)

  return jax.lax.map(quadratic_form, jax.random.split(key, num_probes))


def trace(loss_fn: LossFn, params: PyTree, batches: Iterable[Batch], *,
          num_probes: int = 100, key: jax.Array | None = None,
          mask: Any = None, kind: str = 'hessian',
          model_fn: Callable | None = None,
          output_loss_fn: Callable | None = None) -> tuple[float, float]:
  r"""Hutchinson's estimate of :math:`\mathrm{tr}(H)` with Rademacher probes.

  .. math::
     \widehat{\mathrm{tr}} = \frac{1}{p} \sum_{l=1}^{p} z_l^\top H z_l, \quad
     z_l \in \{\pm 1\}^n, \qquad
     \mathrm{s.e.} = \frac{\mathrm{std}(z_l^\top H z_l)}{\sqrt{p}},

  unbiased with variance :math:`2(\|H\|_F^2 - \sum_i H_{ii}^2)/p`.

  Args:
    loss_fn, params, batches, key, mask, kind, model_fn, output_loss_fn: as in
      `top_eigenpairs`.
    num_probes: number of probes ``p`` (HVPs); at least 2.

  Returns:
    ``(estimate, standard_error)`` as Python floats.

  Raises:
    FloatingPointError: a probe's HVP was not finite.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)    # H = diag(b): exact
    >>> trace(loss, jnp.zeros(3), [jnp.array([1., 2., 4.])], num_probes=4)
    (7.0, 0.0)

  References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix
    for Laplacian smoothing splines" (1989).
  """
  if num_probes < 2:
    raise ValueError('num_probes must be >= 2 to estimate a standard error')
  op = operators.make_operator(loss_fn, params, batches, mask=mask, kind=kind,
                               model_fn=model_fn, output_loss_fn=output_loss_fn)
  values = np.asarray(_hutchinson_jit(op.matvec, op.like,
                                      operators.default_key(key),
                                      num_probes=num_probes), np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise FloatingPointError(
        f'non-finite Hessian-vector product at Hutchinson probe {bad[0] + 1} '
        f'of {num_probes}; stopping.')
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(num_probes))
