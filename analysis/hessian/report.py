"""The spectrum of one checkpoint: what ``python -m analysis.hessian`` reports.

`checkpoint_spectrum` restores only the parameters and model state of one
checkpoint of a `dynamics.runs.Run` and measures, on held-out batches, the
cost of an HVP, the top-``k`` eigenvalues and optionally the SLQ density and
Hutchinson's trace, all of the same matrix (Hessian or Gauss-Newton, whole or
one block). The command writes the result as JSON and plots it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from analysis.hessian import density as density_lib
from analysis.hessian import eigen
from analysis.hessian import operators
from dynamics import runs


def _print(line: str) -> None:
  print(line, flush=True)


def seconds_per_call(fn: Callable[..., Any], *args, repeats: int = 5) -> float:
  """Median wall time of a compiled call (after one warm-up call)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def checkpoint_spectrum(run: runs.Run, step: Optional[int] = None, *,
                        kind: str = 'hessian', k: int = 10,
                        num_iters: Optional[int] = None, tol: float = 1e-4,
                        density: bool = False, num_probes: int = 10,
                        density_iters: int = 80, trace: bool = False,
                        num_batches: int = 4, block: Optional[str] = None,
                        seed: int = 0, progress: bool = True,
                        log: Callable[[str], None] = _print) -> Dict[str, Any]:
  """Top eigenvalues (and density, trace) of checkpoint ``step`` of ``run``.

  Args:
    run: an opened run (`dynamics.runs.Run.open`).
    step: a checkpoint step (default: the latest).
    kind: 'hessian', or 'ggn' for the generalized Gauss-Newton part
      ``J^T H_out J`` (positive semi-definite for cross-entropy and MSE).
    k: top eigenvalues.
    num_iters: maximum Lanczos HVPs for the top-``k`` (default ``3 k + 30``).
    tol: relative Ritz residual to stop at.
    density: also the SLQ spectral density (``num_probes`` probes of
      ``density_iters`` Lanczos steps).
    num_probes, density_iters: see ``density`` and ``trace``.
    trace: also Hutchinson's trace (``max(num_probes, 2)`` probes).
    num_batches: held-out batches ``eval_batch(0..)`` in the loss.
    block: a key of `BLOCKS` or a regular expression on parameter names:
      the spectrum of that diagonal block only.
    seed: seed of the random start and probe vectors.
    progress: show progress bars over HVPs.
    log: where the progress lines go.

  Returns:
    A JSON-able dict: ``workdir``, ``step``, ``num_params``, the HVP cost
    (``hvp_cost_in_gradients``), ``eigenvalues`` (descending) with their
    residuals, and ``density`` / ``trace`` when asked, with timings.

  Raises:
    RunNotFoundError: no checkpoint at ``step`` (the message lists the
      available steps).

  Example:
    >>> from dynamics.runs import Run
    >>> checkpoint_spectrum(Run.open('runs/eos'), 1500, k=3)['eigenvalues']  # doctest: +SKIP
    [10.1, 4.2, 2.9]
  """
  step = run.resolve_step(step)
  restored = run.restore(step, ('params', 'model_state'))
  params, model_state = restored['params'], restored['model_state']
  loss = run.loss_fn(model_state)
  # The same matrix in every computation below: Hessian or GGN.
  matrix: Dict[str, Any] = dict(kind=kind)
  if kind == 'ggn':
    matrix.update(model_fn=run.model_fn(model_state),
                  output_loss_fn=run.output_loss_fn())
  batches = [run.dataset.eval_batch(i) for i in range(num_batches)]
  num_params = sum(np.size(p) for p in jax.tree.leaves(params))
  log(f'step {step}: {num_params:,} parameters, {kind} of the loss on '
      f'{num_batches} held-out batches')

  # Cost of one HVP relative to one gradient, on one batch.
  grad_s = seconds_per_call(jax.jit(jax.grad(loss)), params,
                            jax.tree.map(jnp.asarray, batches[0]))
  hvp_s = seconds_per_call(operators.hvp_fn(loss, params, batches[:1],
                                            **matrix), params)
  result: Dict[str, Any] = {
      'workdir': run.workdir, 'step': step, 'num_params': int(num_params),
      'num_batches': num_batches, 'kind': kind, 'block': block,
      'grad_seconds_per_batch': grad_s, 'hvp_seconds_per_batch': hvp_s,
      'hvp_cost_in_gradients': hvp_s / grad_s}
  log(f'one HVP costs {hvp_s / grad_s:.2f} gradients '
      f'({1e3 * hvp_s:.2f} ms per batch)')
  key = jax.random.PRNGKey(seed)

  start = time.perf_counter()
  vals, _, info = eigen.top_eigenpairs(
      loss, params, batches, k=k, num_iters=num_iters or 3 * k + 30, tol=tol,
      key=key, mask=block, return_info=True, progress=progress, **matrix)
  result.update(eigenvalues=[float(v) for v in vals],
                eigenvalue_residuals=[float(r) for r in info['residuals']],
                eigen_hvps=info['num_hvps'],
                eigen_seconds=time.perf_counter() - start)
  log(f"top-{k}: {np.array2string(np.asarray(vals), precision=5)} "
      f"({info['num_hvps']} HVPs x {num_batches} batches, "
      f"{result['eigen_seconds']:.1f} s)")
  if density:
    start = time.perf_counter()
    grid, values, dinfo = density_lib.spectral_density(
        loss, params, batches, num_probes=num_probes, num_iters=density_iters,
        key=key, mask=block, return_info=True, progress=progress, **matrix)
    result['density'] = {
        'grid': grid.tolist(), 'values': values.tolist(),
        'sigma': dinfo['sigma'], 'num_probes': num_probes,
        'num_iters': int(dinfo['nodes'].shape[1]),
        'nodes': dinfo['nodes'].tolist(), 'weights': dinfo['weights'].tolist()}
    result['density_hvps'] = dinfo['num_hvps']
    result['density_seconds'] = time.perf_counter() - start
    log(f"density: {dinfo['num_hvps']} HVPs x {num_batches} batches, "
        f"{result['density_seconds']:.1f} s")
  if trace:
    start = time.perf_counter()
    estimate, stderr = density_lib.trace(
        loss, params, batches, num_probes=max(num_probes, 2), key=key,
        mask=block, **matrix)
    result.update(trace=estimate, trace_stderr=stderr,
                  trace_seconds=time.perf_counter() - start)
    log(f'trace: {estimate:.5g} +- {stderr:.2g}')
  return result
