"""The training Jacobian's spectrum of a run: what ``python -m
analysis.jacobian`` reports (the plots are `analysis.plots.jacobian_spectrum`)."""

import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import hessian
from analysis.jacobian import products
from analysis.jacobian import training
from dynamics import runs


def _subspace_overlaps(vectors: np.ndarray, basis_rows: np.ndarray) -> np.ndarray:
  """``||B h||^2`` for each unit row ``h`` of ``vectors`` (rows of B orthonormal)."""
  if basis_rows.shape[0] == 0:
    return np.zeros(len(vectors))
  return np.sum((vectors @ basis_rows.T) ** 2, axis=1)


def analyze_run(run: runs.Run, *, bulk_tol: float = 1e-2,
                   hessian_k: int = 10, dense_max: int = 5000, svd_k: int = 20,
                   chunk_size: int = 128) -> Dict[str, Any]:
  """Singular values of the run's training Jacobian, their split, and the
  top Hessian eigenvectors' overlap with each part.

  Everything is built from ``run`` (no second build). Models up to ``dense_max``
  parameters get the dense Jacobian and its full SVD; larger ones the
  ``svd_k`` largest and smallest singular triplets (Lanczos). The top
  ``hessian_k`` Hessian eigenvectors of the training loss (4 training
  batches) at :math:`\\theta_T` are projected on the left singular vectors
  of the bulk (``|s - 1| <= bulk_tol``), amplified and contracted parts.

  Args:
    run: a `dynamics.runs.Run` whose config has a fixed seed, e.g.
      ``Run(config)`` of ``configs/jacobian.py`` (see `make_train_fn`).
    bulk_tol: half-width of the bulk around 1.
    hessian_k: top Hessian eigenvectors compared.
    dense_max: largest model for the dense Jacobian.
    svd_k: singular triplets per end for larger models.
    chunk_size: basis vectors per forward-mode pass (dense Jacobian).

  Returns:
    A JSON-able dict: ``singular_values``, ``split`` (`spectrum_split`),
    ``hessian`` (``eigenvalues``, ``overlap`` per part), timings.

  Example (seconds on ``configs/jacobian.py:smoke``; not run with the
  docstrings, which do not read configs):
    >>> report = analyze_run(runs.Run(config))  # doctest: +SKIP
    >>> report['split']['bulk_fraction']  # doctest: +SKIP
    0.36
  """
  config = run.config
  train_fn, state0 = training.train_fn_and_state(run)
  params_0 = state0.params
  flat0, _ = ravel_pytree(params_0)
  p = int(flat0.size)
  t0 = time.time()
  report: Dict[str, Any] = {'config': config.name, 'num_params': p,
                            'num_steps': int(config.num_steps)}
  if p <= dense_max:
    jac = np.asarray(products.training_jacobian(
        train_fn, params_0=params_0, chunk_size=chunk_size), np.float64)
    report['seconds_jacobian'] = time.time() - t0
    u, s, _ = np.linalg.svd(jac)
    report['dense'] = True
  else:
    svd = products.training_jacobian_svd(train_fn, svd_k, params_0=params_0)
    report['seconds_jacobian'] = time.time() - t0
    s = np.concatenate([np.asarray(svd.top), np.asarray(svd.bottom)[::-1]])
    u = np.concatenate([np.asarray(svd.top_u), np.asarray(svd.bottom_u)[::-1]]).T
    report['dense'] = False
  report['singular_values'] = s.tolist()
  report['split'] = products.spectrum_split(s, bulk_tol)
  # Top Hessian eigenvectors of the training loss at theta_T, against the left
  # singular subspaces (the final-parameter side of J).
  params_t = train_fn(params_0)
  loss_fn = run.loss_fn(state0.model_state)
  batches = [jax.tree.map(jnp.asarray, run.dataset.train_batch(i))
             for i in range(4)]
  eigvals, eigvecs = hessian.top_eigenpairs(
      hessian.curvature('hessian', params_t, batches, loss_fn=loss_fn),
      k=min(hessian_k, p))
  h = np.stack([np.asarray(ravel_pytree(v)[0], np.float64) for v in eigvecs])
  parts_mask = {'bulk': np.abs(s - 1) <= bulk_tol, 'amplified': s > 1 + bulk_tol,
                'contracted': s < 1 - bulk_tol}
  report['hessian'] = {
      'eigenvalues': np.asarray(eigvals).tolist(),
      'overlap': {name: _subspace_overlaps(h, u[:, mask].T).tolist()
                  for name, mask in parts_mask.items()},
      'note': ('overlap[name][i] = squared norm of Hessian eigenvector i '
               'projected on the left singular vectors of that part'
               + ('' if report['dense'] else
                  ' (only the computed extreme singular vectors)')),
  }
  return report


def spectrum_line(report: Dict[str, Any]) -> str:
  """The command's line about the spectrum of `analyze_run`'s ``report``.

  The bulk / amplified / contracted fractions only for a dense spectrum:
  from the ``2 * svd_k`` extreme singular values of the Lanczos path they
  would say nothing of the bulk (a "0.0%" where the dense answer is 54%).
  """
  sp, s = report['split'], report['singular_values']
  if report['dense']:
    parts = (f"bulk {sp['bulk_fraction']:.1%}, amplified "
             f"{sp['amplified_fraction']:.1%}, contracted "
             f"{sp['contracted_fraction']:.1%} (|s-1| <= {sp['bulk_tol']:g})")
  else:
    parts = (f'only the {len(s)} extreme singular values were computed '
             '(Lanczos), so no bulk fraction; pass '
             f"--dense_max={report['num_params']} for the dense spectrum")
  return (f"{report['num_params']} parameters, {report['num_steps']} steps: "
          f"Jacobian in {report['seconds_jacobian']:.1f}s; singular values "
          f'{min(s):.3g}..{max(s):.3g}; {parts}')
