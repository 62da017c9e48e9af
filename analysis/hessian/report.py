"""Reports: one checkpoint's spectrum, and per-block (per-layer) curvature.

`checkpoint_spectrum` restores only the parameters and model state of one
checkpoint of a `dynamics.runs.Run` and measures, on held-out batches, the
cost of an HVP, the top-``k`` eigenvalues (each with its residual and whether
it converged) and optionally the SLQ density and the trace, all of the same
matrix (Hessian, Gauss-Newton, Fisher or empirical Fisher; whole or one
block). `block_report` tabulates, for every layer or tensor, the top
eigenvalue, the trace and the Frobenius norm of its diagonal block. The
command (``python -m analysis.hessian``) writes both as JSON and plots them.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import lanczos as lz
from analysis.hessian import blocks as blocks_lib
from analysis.hessian import density as density_lib
from analysis.hessian import eigen, operators
from dynamics import runs
from dynamics.types import Batch, LossFn, PyTree, param_names


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


def run_matrix(run: runs.Run, model_state: PyTree, kind: str,
               noise_std: Optional[float] = None) -> Dict[str, Any]:
  """The keyword arguments that make ``kind`` the matrix of ``run``'s loss.

  Raises:
    ValueError: a Fisher of an MSE run without ``noise_std`` (its noise
      model), or an unknown kind.
  """
  if kind not in operators.KINDS:
    raise ValueError(f'kind must be one of {operators.KINDS}, got {kind!r}')
  matrix: Dict[str, Any] = dict(kind=kind)
  if kind == 'hessian':
    return matrix
  matrix['model_fn'] = run.model_fn(model_state)
  if kind == 'ggn':
    matrix['output_loss_fn'] = run.output_loss_fn()
  elif run.options.loss == 'cross_entropy':
    matrix['likelihood'] = operators.Likelihood('categorical')
  elif noise_std is None:
    raise ValueError(
        f'kind={kind} of an MSE loss needs a noise model: pass noise_std '
        '(--noise_std=SIGMA), the standard deviation of the Gaussian '
        'likelihood N(f(x), SIGMA^2) (SIGMA=1 matches the loss 0.5 |f - y|^2)')
  else:
    matrix['likelihood'] = operators.Likelihood('gaussian', noise_std)
  return matrix


def _restore(run, step, kind, noise_std, num_batches):
  """``(step, params, loss_fn, matrix kwargs, batches)`` of a checkpoint."""
  step = run.resolve_step(step)
  restored = run.restore(step, ('params', 'model_state'))
  params, model_state = restored['params'], restored['model_state']
  matrix = run_matrix(run, model_state, kind, noise_std)  # The same matrix.
  batches = [run.dataset.eval_batch(i) for i in range(num_batches)]
  return step, params, run.loss_fn(model_state), matrix, batches


def checkpoint_blocks(run: runs.Run, step: Optional[int] = None, *,
                      blocks: Any = 'layers', kind: str = 'hessian',
                      num_probes: int = 100, tol: Optional[float] = None,
                      num_batches: int = 4, noise_std: Optional[float] = None,
                      seed: int = 0,
                      log: Callable[[str], None] = _print) -> Dict[str, Any]:
  """`block_report` of checkpoint ``step`` of ``run`` (held-out batches).

  Returns:
    The report with ``workdir``, ``step``, ``kind``, ``blocks_by`` and
    timings added.
  """
  step, params, loss, matrix, batches = _restore(run, step, kind, noise_std,
                                                 num_batches)
  start = time.perf_counter()
  report = block_report(loss, params, batches, blocks=blocks,
                        num_probes=num_probes, tol=tol,
                        key=jax.random.PRNGKey(seed), **matrix)
  report.update(workdir=run.workdir, step=step, kind=kind, blocks_by=blocks,
                num_batches=num_batches,
                seconds=time.perf_counter() - start)
  log(f"step {step}: {kind} blocks by {blocks} ({report['seconds']:.1f} s)")
  for row in report['blocks'] + [report['whole']]:
    log(f"  {row['name']:<24} size {row['size']:>9,}  top {row['top_eigenvalue']:11.5g}"
        f"  trace {row['trace']:11.5g}  frobenius {row['frobenius']:10.5g}"
        + ('' if row['converged'] else '  (top NOT CONVERGED)'))
  return report


def checkpoint_spectrum(run: runs.Run, step: Optional[int] = None, *,
                        kind: str = 'hessian', k: int = 10,
                        num_iters: Optional[int] = None,
                        tol: Optional[float] = None, density: bool = False,
                        num_probes: int = 10,
                        density_iters: Optional[int] = None,
                        trace: bool = False, trace_method: str = 'xtrace',
                        num_batches: int = 4, block: Optional[str] = None,
                        noise_std: Optional[float] = None, seed: int = 0,
                        progress: bool = True,
                        log: Callable[[str], None] = _print) -> Dict[str, Any]:
  """Top eigenvalues (and density, trace) of checkpoint ``step`` of ``run``.

  Args:
    run: an opened run (`dynamics.runs.Run.open`).
    step: a checkpoint step (default: the latest).
    kind: 'hessian', 'ggn', 'fisher' or 'empirical_fisher'.
    k: top eigenvalues.
    num_iters: cap on Lanczos HVPs (default: grows with ``k`` and the size).
    tol: relative residual to stop at (default: the dtype's).
    density: also the SLQ spectral density (``num_probes`` probes of at most
      ``density_iters`` Lanczos steps).
    num_probes: probes of the density.
    trace: also the trace (``trace_method``, to 1% standard error).
    trace_method: 'xtrace', 'hutch++' or 'hutchinson'.
    num_batches: held-out batches ``eval_batch(0..)`` in the loss.
    block: a key of `BLOCKS` or a regular expression on parameter names:
      the spectrum of that diagonal block only.
    noise_std: the Gaussian noise model of an MSE loss (Fisher kinds).
    seed: seed of the random start and probe vectors.
    progress: show progress bars over HVPs.
    log: where the progress lines go.

  Returns:
    A JSON-able dict: ``workdir``, ``step``, ``num_params``, the HVP cost
    (``hvp_cost_in_gradients``), ``eigenvalues`` (descending) with their
    ``eigenvalue_residuals``, ``eigenvalue_converged`` and ``converged``, and
    ``density`` / ``trace`` when asked, with timings.

  Raises:
    RunNotFoundError: no checkpoint at ``step`` (the message lists the
      available steps).

  Example:
    >>> from dynamics.runs import Run
    >>> checkpoint_spectrum(Run.open('runs/eos'), 1500, k=3)['eigenvalues']  # doctest: +SKIP
    [10.1, 4.2, 2.9]
  """
  step, params, loss, matrix, batches = _restore(run, step, kind, noise_std,
                                                  num_batches)
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
      loss, params, batches, k=k, num_iters=num_iters, tol=tol, key=key,
      mask=block, return_info=True, progress=progress, **matrix)
  each = [bool(r <= info['tol']) for r in info['relative_residuals']]
  result.update(eigenvalues=[float(v) for v in vals],
                eigenvalue_residuals=[float(r) for r in info['residuals']],
                eigenvalue_relative_residuals=[
                    float(r) for r in info['relative_residuals']],
                eigenvalue_converged=each, converged=info['converged'],
                tol=info['tol'], eigen_hvps=info['num_hvps'],
                eigen_seconds=time.perf_counter() - start)
  log(f"top-{k} ({info['num_hvps']} HVPs x {num_batches} batches, "
      f"{result['eigen_seconds']:.1f} s; tol {info['tol']:g}):")
  for i, (v, r, ok) in enumerate(zip(result['eigenvalues'],
                                     result['eigenvalue_relative_residuals'],
                                     each)):
    log(f"  lambda_{i + 1} = {v:.6g}  relative residual {r:.1e}  "
        f"{'converged' if ok else 'NOT CONVERGED'}")
  if density:
    start = time.perf_counter()
    grid, values, dinfo = density_lib.spectral_density(
        loss, params, batches, num_probes=num_probes, num_iters=density_iters,
        key=key, mask=block, return_info=True, progress=progress, **matrix)
    result['density'] = {
        'grid': grid.tolist(), 'values': values.tolist(),
        'sigma': dinfo['sigma'], 'num_probes': num_probes,
        'num_iters': int(dinfo['num_iters']), 'change': dinfo['change'],
        'converged': dinfo['converged'],
        'nodes': dinfo['nodes'].tolist(), 'weights': dinfo['weights'].tolist()}
    result['density_hvps'] = dinfo['num_hvps']
    result['density_seconds'] = time.perf_counter() - start
    log(f"density: {dinfo['num_hvps']} HVPs x {num_batches} batches, "
        f"{result['density_seconds']:.1f} s")
  if trace:
    start = time.perf_counter()
    estimate, stderr, tinfo = density_lib.trace(
        loss, params, batches, method=trace_method, key=key, mask=block,
        return_info=True, **matrix)
    result.update(trace=estimate, trace_stderr=stderr,
                  trace_method=trace_method, trace_hvps=tinfo['num_hvps'],
                  trace_seconds=time.perf_counter() - start)
    log(f'trace ({trace_method}, {tinfo["num_hvps"]} HVPs): {estimate:.5g} '
        f'+- {stderr:.2g}')
  return result


@functools.partial(jax.jit, static_argnames=('num', 'batch_size'))
def _block_forms(op, like, weights, key, index, exact, *, num, batch_size):
  """Per probe ``z``: ``(z^T C z, |C z|^2)``; ``z`` the unit vector of
  ``index[l]`` (none for -1) where ``exact``, else random signs on the block."""
  flat, unravel = ravel_pytree(like)
  dtype = jnp.promote_types(flat.dtype, jnp.float32)
  w = ravel_pytree(weights)[0].astype(dtype)

  def forms(args):
    sub, i = args
    signs = jax.random.rademacher(sub, w.shape, dtype) * w
    unit = jnp.zeros_like(w).at[jnp.maximum(i, 0)].set(jnp.where(i >= 0, 1, 0))
    z = jnp.where(exact, unit, signs)
    cz = ravel_pytree(op(unravel(z.astype(flat.dtype))))[0].astype(dtype)
    return jnp.vdot(z, cz), jnp.vdot(cz, cz)

  return jax.lax.map(forms, (jax.random.split(key, num), index),
                     batch_size=batch_size)


def block_report(loss_fn: LossFn | None, params: PyTree,
                 batches: Iterable[Batch], *, blocks: Any = 'layers',
                 num_probes: int = 100, tol: float | None = None,
                 key: jax.Array | None = None, batch_size: int = 16,
                 **matrix) -> Dict[str, Any]:
  r"""Top eigenvalue, trace and Frobenius norm of every diagonal block.

  For each block ``S`` (a layer, a tensor, ...) of the parameters and for
  the whole model: :math:`\lambda_{\max}(C_{SS})` by Lanczos (converged to
  ``tol``), :math:`\mathrm{tr}(C_{SS})` and :math:`\|C_{SS}\|_F` -- exactly
  (from the ``|S|`` unit vectors) when ``|S| <= num_probes``, else by
  Hutchinson with ``num_probes`` Rademacher probes (:math:`E[z^\top C z] =
  \mathrm{tr}\,C`, :math:`E\|Cz\|^2 = \|C\|_F^2`) with standard errors. The
  blocks are masks applied as data: one compiled HVP, one compiled Lanczos
  and one compiled probe loop serve every block.

  Args:
    loss_fn, params, batches, key: as in `top_eigenpairs`.
    blocks: 'layers', 'tensors', a key of `BLOCKS` or a regular expression
      (see `layer_blocks`), or a dict ``{name: selector}`` of `block_mask`
      selectors.
    num_probes: probes per trace / Frobenius estimate.
    tol: Lanczos tolerance (default: the dtype's).
    batch_size: probes whose HVPs are batched together.
    **matrix: ``kind``, ``model_fn``, ``output_loss_fn``, ``likelihood``.

  Returns:
    ``{'blocks': [row, ...], 'whole': row}``, each row a dict with ``name``,
    ``params`` (names), ``size``, ``top_eigenvalue``, ``top_residual``,
    ``converged``, ``trace``, ``trace_stderr``, ``frobenius``,
    ``frobenius_stderr`` and ``exact``.

  Example:
    >>> params = {'a': {'w': jnp.ones(2)}, 'b': {'w': jnp.ones(1)}}
    >>> loss = lambda p, x: 0.5 * jnp.sum(x['a'] * p['a']['w'] ** 2) + (
    ...     p['b']['w'][0] ** 2)
    >>> rows = block_report(loss, params, [{'a': jnp.array([1., 3.])}])
    >>> [(r['name'], round(r['top_eigenvalue'], 4), round(r['trace'], 4))
    ...  for r in rows['blocks']]
    [('a', 3.0, 4.0), ('b', 2.0, 2.0)]
  """
  if isinstance(blocks, dict):
    selectors = dict(blocks)
  else:
    groups = blocks_lib.layer_blocks(params, blocks)
    selectors = {name: (lambda n, _, names=frozenset(names): n in names)
                 for name, names in groups.items()}
  key = operators.default_key(key)
  base = operators.hvp_fn(loss_fn, params, batches, **matrix)
  names = param_names(params)
  n = lz.trees.size(params)
  # One basis size (and so one compiled Lanczos) for every block.
  basis_size = lz.default_basis_size(
      1, lz.default_max_matvecs(1, n), n)
  rows = []
  for i, (name, select) in enumerate(list(selectors.items()) + [('whole',
                                                                  None)]):
    weights, dim = blocks_lib.mask_weights(
        params, (lambda *_: True) if select is None else select)
    op = jax.tree_util.Partial(blocks_lib.masked_apply, base, weights)
    sub = jax.random.fold_in(key, i)
    top = lz.eigsh(op, params, 1, key=sub, tol=tol, mask=weights, dim=dim,
                   basis_size=basis_size, vectors=False,
                   name=f'block_report[{name}]', unit='HVPs')
    exact = dim <= num_probes
    index = np.full(num_probes, -1, np.int32)
    if exact:
      index[:dim] = np.flatnonzero(lz.space.host_flat(weights, np.float32))
    quad, sq = (np.asarray(x, np.float64) for x in _block_forms(
        op, params, weights, sub, index, np.bool_(exact), num=num_probes,
        batch_size=batch_size))
    if exact:
      tr, tr_se, fro2, fro2_se = quad.sum(), 0.0, sq.sum(), 0.0
    else:
      tr, tr_se = density_lib.estimators.summarize(quad)
      fro2, fro2_se = density_lib.estimators.summarize(sq)
    if not (np.isfinite(tr) and np.isfinite(fro2)):
      raise FloatingPointError(f'non-finite HVP in block {name!r}; stopping.')
    fro = float(np.sqrt(max(fro2, 0.0)))
    selected = names if select is None else [
        nm for nm, c in zip(names, jax.tree.leaves(blocks_lib.block_mask(
            params, select))) if c]
    rows.append({
        'name': name, 'params': selected, 'size': int(dim),
        'top_eigenvalue': float(top.eigvals[0]),
        'top_residual': float(top.relative[0]), 'converged': top.converged,
        'top_hvps': top.num_matvecs, 'trace': float(tr),
        'trace_stderr': float(tr_se), 'frobenius': fro,
        'frobenius_stderr': float(fro2_se / (2 * fro)) if fro > 0 else 0.0,
        'exact': bool(exact)})
  return {'blocks': rows[:-1], 'whole': rows[-1], 'num_probes': num_probes}
