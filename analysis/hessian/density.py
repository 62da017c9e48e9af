r"""The whole spectrum at once: its density (stochastic Lanczos quadrature,
`spectral_density`), its trace (`trace`: Hutchinson, Hutch++, XTrace) and its
diagonal (`diagonal`: Hutchinson, XDiag)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis import lanczos as lz
from analysis.hessian import estimators, operators, registry
from analysis.hessian.operators import Operator, curvature  # pylint: disable=unused-import (examples)


def spectral_density(op: Operator, *, num_probes: int = 10,
                     num_iters: int | None = None, tol: float | None = 1e-2,
                     grid: Any = 2001, sigma: float | None = None,
                     key: jax.Array | None = None, dtype: Any = None,
                     batch_size: int | None = None,
                     return_info: bool = False, progress: bool = False):
  r"""Curvature eigenvalue density by stochastic Lanczos quadrature (SLQ).

  .. math::
     \phi_\sigma(t) = \frac{1}{n_v} \sum_{l=1}^{n_v} \sum_{i=1}^{m}
       \tau_i^{(l)}\, \mathcal{N}(t;\, \theta_i^{(l)}, \sigma^2)
     \approx \frac{1}{n} \sum_{j=1}^{n} \mathcal{N}(t;\, \lambda_j, \sigma^2),

  with :math:`(\theta^{(l)}, \tau^{(l)})` the Gauss quadrature nodes and
  weights of ``m`` Lanczos steps from the ``l``-th Gaussian probe (see
  `analysis.lanczos.slq_nodes`). The density integrates to one and its
  moments are unbiased estimates of :math:`\mathrm{tr}(C^p)/n`, broadened by
  ``sigma`` (the second moment gains :math:`\sigma^2`). The probes can run as
  one batch (one compiled loop, the HVP applied to all probes at once); every 20
  steps (a quarter of ``num_iters`` if less) the broadened density is
  compared with the previous one, and the run stops once they differ by at
  most ``tol`` in L1 norm.

  Args:
    op, key, dtype: as in `top_eigenpairs`.
    num_probes: random probe vectors :math:`n_v`.
    num_iters: Lanczos steps per probe ``m``: the cap with ``tol`` (None:
      `analysis.lanczos.default_max_matvecs` for ``k = 1``).
    tol: L1 change of the density between checks at which to stop (None: run
      ``num_iters`` steps).
    grid: number of grid points (spanning the nodes with a ``6 sigma``
      margin, so the density integrates to 1 on it) or an explicit grid.
    sigma: Gaussian broadening (default: 1% of the nodes' range).
    batch_size: probes per compiled batch: all at once in one ``vmap`` (one
      compiled loop), or 1 (one after another). Default: 1 on CPU, where it
      measured faster, all on accelerators.
    return_info: also return ``{'nodes', 'weights', 'num_hvps', 'sigma',
      'num_iters', 'change', 'converged'}``.
    progress: show a progress bar over HVPs.

  Returns:
    ``(grid (g,), density (g,))`` as NumPy float64 arrays.

  Warns:
    analysis.lanczos.ConvergenceWarning: ``num_iters`` steps did not bring
    the change under ``tol``.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)    # eigenvalues 1, 3
    >>> op = curvature('hessian', jnp.zeros(2), [jnp.array([1., 3.])],
    ...                loss_fn=loss)
    >>> grid, density, info = spectral_density(
    ...     op, num_probes=4, num_iters=2, sigma=0.1, return_info=True)
    >>> np.round(np.sort(info['nodes'][0]), 4)   # n steps: the eigenvalues
    array([1., 3.])
    >>> round(float(np.trapezoid(density, grid)), 3)
    1.0

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
    via Hessian Eigenvalue Density" (ICML 2019); Lin, Saad & Yang,
    "Approximating Spectral Densities of Large Matrices" (2016).
  """
  if num_iters is None:
    num_iters = lz.default_max_matvecs(1, op.dim)
  out = lz.slq_nodes(op.matvec, op.like, num_probes=num_probes,
                     num_iters=num_iters, key=operators.default_key(key),
                     dtype=dtype, batch_size=_probe_batch(batch_size),
                     tol=tol, sigma=sigma,
                     mask=op.mask, dim=op.dim, progress=progress)
  if not out.converged:
    moved = ('could not be checked (raise num_iters)' if out.change is None
             else f'still moved by {out.change:.2g} (L1) > tol={tol:g} '
             'between the last checks')
    warnings.warn(
        f'spectral_density did not converge: after {out.num_steps} Lanczos '
        f'steps per probe ({num_probes * out.num_steps} HVPs) the density '
        f'{moved}; raise num_iters or sigma.', lz.ConvergenceWarning,
        stacklevel=2)
  nodes, weights = out.nodes, out.weights
  sigma = lz.quadrature.broadening(nodes, sigma)
  lo, hi = float(nodes.min()), float(nodes.max())
  if np.ndim(grid) == 0:
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, int(grid))
  grid = np.asarray(grid, np.float64)
  density = lz.gaussian_density(nodes, weights, grid, sigma)
  if return_info:
    return grid, density, {
        'nodes': nodes, 'weights': weights, 'sigma': sigma,
        'num_hvps': num_probes * out.num_steps, 'num_iters': out.num_steps,
        'change': out.change, 'converged': out.converged}
  return grid, density


def _budget(num_hvps, num_probes, rtol):
  """``(fixed budget or None, rtol or None)`` from the user's arguments."""
  if num_hvps is None:
    num_hvps = num_probes
  if num_hvps is None:
    return None, 1e-2 if rtol is None else rtol
  return int(num_hvps), rtol


def _method(methods: dict, method: str):
  if method not in methods:
    raise ValueError(f'method must be one of {tuple(methods)}, got {method!r}')
  return methods[method]


def _check_sketch(method: str, sketch: int | None, num: int, dim: int) -> None:
  """The sketching estimators need fewer sketch vectors than dimensions."""
  if sketch is not None and num // sketch >= dim:
    raise ValueError(
        f'method={method!r} with {num} HVPs sketches {num // sketch} '
        f'directions, not fewer than the dimension ({dim}): use fewer HVPs '
        "(the answer is then exact already) or method='hutchinson'")


def _probe_batch(batch_size: int | None) -> int | None:
  """SLQ's default batch: one probe at a time on CPU (measured faster there,
  see the README), all at once on accelerators."""
  if batch_size is not None:
    return batch_size
  return 1 if jax.default_backend() == 'cpu' else None


def trace(op: Operator, *, method: str | None = None,
          num_hvps: int | None = None, num_probes: int | None = None,
          rtol: float | None = None, max_hvps: int = 1000,
          key: jax.Array | None = None, batch_size: int = 16,
          return_info: bool = False):
  r"""A randomized estimate of :math:`\mathrm{tr}(C)` and its standard error.

  ``method`` is a key of `analysis.hessian.registry.TRACE_METHODS`: 'xtrace'
  (the default), 'hutch++' or 'hutchinson' (see
  `analysis.hessian.estimators`). With a budget (``num_hvps``) it spends
  exactly that many HVPs; without one, Hutch++ doubles its budget (from
  100) and Hutchinson adds probes (10 at a time) until the standard error
  is at most ``rtol`` (default 1e-2) of the estimate, up to ``max_hvps``.
  XTrace reports no standard error (NaN: neither the jackknife's nor its
  released code's is calibrated, see `analysis.hessian.estimators`), so
  without a budget Hutch++ runs in its place (``info['method']`` says
  which ran), and a budget with an ``rtol`` is refused.

  .. math::
     \widehat{\mathrm{tr}}_{\mathrm{Hutchinson}} = \frac{1}{p}
       \sum_{l=1}^{p} z_l^\top C z_l, \quad z_l \in \{\pm 1\}^n, \qquad
     \mathrm{s.e.} = \frac{\mathrm{std}(z_l^\top C z_l)}{\sqrt{p}}.

  Args:
    op, key: as in `top_eigenpairs`.
    method: the estimator (default 'xtrace'; 'hutchinson' with
      ``num_probes``; 'hutch++' in XTrace's place without a budget).
    num_hvps: HVP budget (None: adaptive to ``rtol``).
    num_probes: Hutchinson with this many probes (earlier versions' API).
    rtol: relative standard error to reach (with a budget: only checked).
    max_hvps: the adaptive cap.
    batch_size: probes whose HVPs are batched together (memory).
    return_info: also return ``{'num_hvps', 'method', 'converged'}``.

  Returns:
    ``(estimate, standard_error)`` as Python floats (plus ``info``); the
    standard error is NaN for XTrace.

  Raises:
    ValueError: an unknown method, fewer HVPs than it needs, or XTrace
      with both a budget and an ``rtol``.
    FloatingPointError: a non-finite HVP.

  Warns:
    analysis.lanczos.ConvergenceWarning: ``rtol`` not reached.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)    # C = diag(b): exact
    >>> op = curvature('hessian', jnp.zeros(3), [jnp.array([1., 2., 4.])],
    ...                loss_fn=loss)
    >>> trace(op, num_hvps=4, method='hutchinson')
    (7.0, 0.0)

  References:
    Hutchinson (1989); Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal
    Stochastic Trace Estimation" (SOSA 2021); Epperly, Tropp & Webber,
    "XTrace: Making the Most of Every Sample in Stochastic Trace Estimation"
    (SIMAX 2024).
  """
  if method is None:
    method = 'hutchinson' if num_probes is not None else 'xtrace'
  m = _method(registry.TRACE_METHODS, method)
  budget, rtol = _budget(num_hvps, num_probes, rtol)
  if not m.stderr and rtol is not None:
    if budget is not None:
      raise ValueError(
          f'method={method!r} reports no standard error, so rtol={rtol:g} '
          "cannot be checked: drop rtol, or use method='hutch++'")
    method = 'hutch++'                # Adaptive: needs a standard error.
    m = registry.TRACE_METHODS[method]
  if budget is not None and budget < m.min_hvps:
    raise ValueError(f"method={method!r} needs at least {m.min_hvps} HVPs "
                     f'(one standard error needs two estimates), got {budget}')
  if budget is not None:
    _check_sketch(method, m.sketch, budget, op.dim)
  key = operators.default_key(key)
  used, round_ = 0, 0
  values = np.zeros(0)
  while True:
    sub = jax.random.fold_in(key, round_)
    if m.adds_probes:
      num = budget if budget is not None else min(10, max_hvps - used)
    else:
      num = budget if budget is not None else min(100 * 2 ** round_,
                                                  max_hvps, op.dim)
      num -= num % m.multiple
    new = m.estimates(op, sub, num, batch_size)
    values = np.concatenate([values, new]) if m.adds_probes else new
    used = used + num if m.adds_probes else num
    estimate, stderr = estimators.summarize(values)
    stderr = stderr if m.stderr else float('nan')
    if not np.isfinite(estimate):
      raise FloatingPointError(
          f'non-finite Hessian-vector product in the {method} trace estimate '
          f'({used} HVPs); stopping.')
    round_ += 1
    done = rtol is not None and stderr <= rtol * abs(estimate)
    if budget is not None or done or used >= max_hvps:
      break
  converged = rtol is None or stderr <= rtol * abs(estimate)
  if not converged:
    warnings.warn(
        f'trace ({method}) did not converge: standard error {stderr:.3g} '
        f'({stderr / max(abs(estimate), 1e-300):.2g} relative) > rtol={rtol:g}'
        f' after {used} HVPs; raise num_hvps / max_hvps or try '
        "method='hutch++'.", lz.ConvergenceWarning, stacklevel=2)
  if return_info:
    return estimate, stderr, {'num_hvps': used, 'method': method,
                              'converged': converged}
  return estimate, stderr


def diagonal(op: Operator, *, method: str = 'hutchinson',
             num_hvps: int = 100, key: jax.Array | None = None,
             batch_size: int = 16, return_info: bool = False):
  r"""A randomized estimate of the diagonal of :math:`C`, shaped like params.

  ``method`` is a key of `analysis.hessian.registry.DIAGONAL_METHODS`:
  'hutchinson': :math:`\frac1p \sum_l z_l \odot C z_l` (unbiased; exact for
  a diagonal :math:`C`), with a per-entry standard error; 'xdiag': Epperly,
  Tropp & Webber's exchangeable estimator (exact when :math:`C` has rank
  below ``num_hvps / 2``; far better when the spectrum decays).

  Args:
    op, key, batch_size: as in `trace`.
    method: 'hutchinson' or 'xdiag'.
    num_hvps: HVP budget.
    return_info: also return ``{'num_hvps', 'stderr'}`` (the per-entry
      standard error, Hutchinson only).

  Returns:
    A pytree like the parameters (zero outside the operator's block).

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> op = curvature('hessian', jnp.zeros(3), [jnp.array([1., 2., 4.])],
    ...                loss_fn=loss)
    >>> diagonal(op, num_hvps=2)
    Array([1., 2., 4.], dtype=float32)
  """
  m = _method(registry.DIAGONAL_METHODS, method)
  if num_hvps < 2:
    raise ValueError(f'num_hvps must be >= 2, got {num_hvps}')
  _check_sketch(method, m.sketch, num_hvps, op.dim)
  num = num_hvps - num_hvps % m.multiple
  flat, stderr = m.estimate(op, operators.default_key(key), num, batch_size)
  if not bool(jnp.all(jnp.isfinite(flat))):
    raise FloatingPointError(f'non-finite Hessian-vector product in the '
                             f'{method} diagonal estimate; stopping.')
  out = estimators.unflatten_like(flat, op.like)
  if return_info:
    return out, {'num_hvps': num, 'stderr': None if stderr is None else
                 estimators.unflatten_like(stderr, op.like)}
  return out
