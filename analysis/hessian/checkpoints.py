"""Curvature of a run's checkpoint: `run_curvature`, `checkpoint_spectrum`,
`checkpoint_blocks`.

`run_curvature` restores only the parameters and model state of one
checkpoint of a `dynamics.runs.Run` and returns the `Operator` of the
matrix ``kind`` of its loss on held-out batches, taking from the run what
the kind's product needs (`analysis.hessian.registry.PRODUCTS`).
`checkpoint_spectrum` measures on it the cost of an HVP, the top-``k``
eigenvalues (each with its residual and whether it converged) and optionally
the SLQ density and the trace; `checkpoint_blocks` the per-block table of
`block_report`. The command (``python -m analysis.hessian``) writes both as
JSON and plots them. Nothing here prints unless given a ``log``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis import lanczos
from analysis.hessian import density as density_lib
from analysis.hessian import eigen, registry, report
from analysis.hessian import likelihood as likelihood_lib
from analysis.hessian import softmax_ggn
from analysis.hessian.operators import Operator, curvature
from dynamics import runs
from dynamics.timing import seconds_per_call
from dynamics.types import Batch, PyTree

Log = Optional[Callable[[str], None]]

# How each input of `registry.INPUTS` is taken from a run, its checkpoint's
# model state and ``extra``: the noise model of an MSE loss, the Fisher's
# samples and the GGN's vocabulary chunk.
_FROM_RUN = {
    'loss_fn': lambda run, model_state, extra: run.loss_fn(model_state),
    'model_fn': lambda run, model_state, extra: run.model_fn(model_state),
    'output_loss_fn': lambda run, model_state, extra: softmax_ggn.output_loss(
        run, model_state, extra[2]),
    'likelihood': lambda run, model_state, extra: likelihood_lib.for_loss(
        run.options.loss, *extra[:2]),
}


def run_inputs(run: runs.Run, kind: str, model_state: PyTree = None,
               noise_std: Optional[float] = None,
               num_samples: int = 1,
               vocab_chunk: Optional[int] = None) -> Dict[str, Any]:
  """What ``kind``'s product needs (its entry's ``needs``), from ``run``.

  Args:
    run, kind, model_state: the run, the matrix, the checkpoint's state.
    noise_std: the Gaussian noise model of an MSE loss (Fisher kinds).
    num_samples: labels sampled per position for the Fisher
      (`likelihood.for_loss`).
    vocab_chunk: the GGN's softmax by vocabulary chunks of this many
      columns (`softmax_ggn.output_loss`; None: the run's
      ``loss.vocab_chunk``, or automatic for large vocabularies; 0: off).

  Raises:
    ValueError: an unknown kind, a Fisher of an MSE run without
      ``noise_std`` (its noise model), or a ``vocab_chunk`` the run's loss
      cannot take.
  """
  return {name: _FROM_RUN[name](run, model_state,
                                (noise_std, num_samples, vocab_chunk))
          for name in registry.product(kind).needs}


def make_mesh(fsdp: int) -> jax.sharding.Mesh:
  """The training mesh over every device: ``fsdp`` shards of the
  parameters, the batch split over all devices (`dynamics.sharding`).

  Raises:
    ValueError: ``fsdp`` does not divide the device count.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dynamics import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  if int(fsdp) < 1 or jax.device_count() % int(fsdp):
    raise ValueError(f'{fsdp} shards do not divide the '
                     f'{jax.device_count()} devices')
  return sharding_lib.make_mesh(ml_collections.ConfigDict(
      {'data': -1, 'fsdp': int(fsdp)}))


def place(run: runs.Run, mesh: Optional[jax.sharding.Mesh], params: PyTree,
          model_state: PyTree, batches: List[Batch]
          ) -> Tuple[PyTree, PyTree, List[Batch]]:
  """Parameters FSDP-sharded as training shards them (the run's
  ``mesh.fsdp_min_size``), model state replicated, each batch split over
  every device; unchanged for ``mesh=None`` (one device).

  Raises:
    ValueError: a batch that does not split evenly over the devices.
  """
  if mesh is None:
    return params, model_state, batches
  from dynamics import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  size = int(np.shape(jax.tree.leaves(batches[0])[0])[0])
  try:
    sharding_lib.check_batch(size, mesh)
  except sharding_lib.MeshError as e:
    raise ValueError(f'the held-out batch of {size} does not split over '
                     f'the mesh: {e}') from None
  params = jax.device_put(params, sharding_lib.tree_shardings(
      mesh, params, run.config.mesh.fsdp_min_size))
  model_state = jax.device_put(model_state, sharding_lib.replicated(mesh))
  split = sharding_lib.batch_sharding(mesh)
  return params, model_state, [jax.device_put(b, split) for b in batches]


def product_memory(op: Operator) -> Dict[str, int]:
  """Bytes of one compiled product ``op.matvec`` (XLA's memory analysis,
  per device): ``temp_bytes`` (its intermediates), ``argument_bytes``,
  ``output_bytes`` and ``peak_bytes`` (their sum, an upper bound on what
  the product holds at once). Empty where the backend does not say."""
  try:
    stats = jax.jit(lambda matvec, v: matvec(v)).lower(
        op.matvec, op.like).compile().memory_analysis()
    out = {'temp_bytes': int(stats.temp_size_in_bytes),
           'argument_bytes': int(stats.argument_size_in_bytes),
           'output_bytes': int(stats.output_size_in_bytes)}
  except Exception:  # pylint: disable=broad-except (backend-dependent)
    return {}
  out['peak_bytes'] = sum(out.values())
  return out


def _duration(seconds: float) -> str:
  """``'3.2 s'``, ``'4.5 min'``, ``'2.1 h'``: a time estimate, readably."""
  if seconds < 120:
    return f'{seconds:.1f} s'
  if seconds < 7200:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


def _checkpoint(run: runs.Run, step: Optional[int], num_batches: int,
                fsdp: Optional[int] = None
                ) -> Tuple[int, PyTree, PyTree, List[Batch]]:
  """``(step, params, model_state, held-out batches)`` of a checkpoint,
  placed on the mesh of ``fsdp`` (`make_mesh`, `place`; None: one device)."""
  step = run.resolve_step(step)
  restored = run.restore(step, ('params', 'model_state'))
  batches = [run.dataset.eval_batch(i) for i in range(num_batches)]
  mesh = None if fsdp is None else make_mesh(fsdp)
  return (step,) + place(run, mesh, restored['params'],
                         restored['model_state'], batches)


def run_curvature(run: runs.Run, kind: str = 'hessian',
                  step: Optional[int] = None, *, num_batches: int = 4,
                  noise_std: Optional[float] = None,
                  mask: Any = None, num_samples: int = 1) -> Operator:
  """The curvature ``kind`` of ``run``'s loss at checkpoint ``step``.

  Args:
    run: an opened run (`dynamics.runs.Run.open`).
    kind: a key of `analysis.hessian.registry.PRODUCTS`.
    step: a checkpoint step (default: the latest).
    num_batches: held-out batches ``eval_batch(0..)`` in the loss.
    noise_std: the Gaussian noise model of an MSE loss (Fisher kinds).
    mask: restrict to a block of parameters (`Operator.restrict`).
    num_samples: labels sampled per position (``kind='fisher'``).

  Raises:
    RunNotFoundError: no checkpoint at ``step`` (the message lists the
      available steps). ValueError: see `run_inputs`.

  Example:
    >>> op = run_curvature(Run.open('runs/eos'), 'ggn', 1500)  # doctest: +SKIP
    >>> top_eigenpairs(op, k=3)[0]  # doctest: +SKIP
  """
  _, params, model_state, batches = _checkpoint(run, step, num_batches)
  return curvature(kind, params, batches, mask=mask,
                   **run_inputs(run, kind, model_state, noise_std,
                                num_samples))


def _memory(op: Operator, inputs: Dict[str, Any], fsdp: Optional[int],
            log: Callable[[str], None]) -> Dict[str, Any]:
  """What a report says of the product's memory and layout."""
  head = inputs.get('output_loss_fn')
  chunk = head.chunk if isinstance(head, softmax_ggn.ChunkedHead) else None
  memory = product_memory(op)
  devices = 1 if fsdp is None else jax.device_count()
  if memory:
    log(f"one product holds at most {memory['peak_bytes'] / 2**20:.1f} MiB "
        f'per device ({devices} device(s)'
        + (f', fsdp={fsdp}' if fsdp else '')
        + (f', softmax by vocabulary chunks of {chunk}' if chunk else '')
        + ')')
  return {'product_memory': memory, 'vocab_chunk': chunk, 'devices': devices,
          'fsdp': fsdp}


def _quiet(log: Log) -> Callable[[str], None]:
  return log if log is not None else (lambda _: None)


def checkpoint_blocks(run: runs.Run, step: Optional[int] = None, *,
                      blocks: Any = 'layers', kind: str = 'hessian',
                      num_probes: int = 100, tol: Optional[float] = None,
                      num_batches: int = 4, noise_std: Optional[float] = None,
                      seed: int = 0, log: Log = None,
                      num_samples: int = 1, fsdp: Optional[int] = None,
                      vocab_chunk: Optional[int] = None) -> Dict[str, Any]:
  """`block_report` of checkpoint ``step`` of ``run`` (held-out batches).

  Args:
    run, step, kind, num_batches, noise_std, seed, num_samples, fsdp,
      vocab_chunk: as in `checkpoint_spectrum`.
    blocks, num_probes, tol: as in `block_report`.
    log: where the table's lines go (None: nowhere).

  Returns:
    The report with ``workdir``, ``step``, ``kind``, ``blocks_by`` and
    timings added.
  """
  log = _quiet(log)
  step, params, model_state, batches = _checkpoint(run, step, num_batches,
                                                   fsdp)
  inputs = run_inputs(run, kind, model_state, noise_std, num_samples,
                      vocab_chunk)
  op = curvature(kind, params, batches, **inputs)
  memory = _memory(op, inputs, fsdp, log)
  start = time.perf_counter()
  out = report.block_report(op, blocks=blocks, num_probes=num_probes, tol=tol,
                            key=jax.random.PRNGKey(seed))
  if kind == 'fisher':
    out['fisher_samples'] = num_samples
  out.update(workdir=run.workdir, step=step, kind=kind, blocks_by=blocks,
             num_batches=num_batches, seconds=time.perf_counter() - start,
             **memory)
  log(f"step {step}: {kind} blocks by {blocks} ({out['seconds']:.1f} s)")
  for row in out['blocks'] + [out['whole']]:
    log(f"  {row['name']:<24} size {row['size']:>9,}  top {row['top_eigenvalue']:11.5g}"
        f"  trace {row['trace']:11.5g}  frobenius {row['frobenius']:10.5g}"
        + ('' if row['converged'] else '  (top NOT CONVERGED)'))
  return out


def checkpoint_spectrum(run: runs.Run, step: Optional[int] = None, *,
                        kind: str = 'hessian', k: int = 10,
                        num_iters: Optional[int] = None,
                        tol: Optional[float] = None, density: bool = False,
                        num_probes: int = 10,
                        density_iters: Optional[int] = None,
                        trace: bool = False, trace_method: str = 'hutch++',
                        num_batches: int = 4, block: Optional[str] = None,
                        noise_std: Optional[float] = None, seed: int = 0,
                        progress: bool = False, log: Log = None,
                        num_samples: int = 1, fsdp: Optional[int] = None,
                        vocab_chunk: Optional[int] = None) -> Dict[str, Any]:
  """Top eigenvalues (and density, trace) of checkpoint ``step`` of ``run``.

  Args:
    run: an opened run (`dynamics.runs.Run.open`).
    step: a checkpoint step (default: the latest).
    kind: a key of `analysis.hessian.registry.PRODUCTS` ('hessian', 'ggn',
      'fisher', 'empirical_fisher').
    k: top eigenvalues.
    num_iters: cap on Lanczos HVPs (default: grows with ``k`` and the size).
    tol: relative residual to stop at (default: the dtype's).
    density: also the SLQ spectral density (``num_probes`` probes of at most
      ``density_iters`` Lanczos steps).
    num_probes: probes of the density.
    trace: also the trace (``trace_method``, to 1% standard error).
    trace_method: a key of `registry.TRACE_METHODS` (XTrace, which has no
      standard error to stop on, runs as Hutch++; the result says which).
    num_batches: held-out batches ``eval_batch(0..)`` in the loss.
    block: a key of `BLOCKS` or a regular expression on parameter names:
      the spectrum of that diagonal block only.
    noise_std: the Gaussian noise model of an MSE loss (Fisher kinds).
    seed: seed of the random start and probe vectors.
    progress: show progress bars over HVPs.
    log: where the progress lines go (None: nowhere).
    num_samples: labels sampled per position for ``kind='fisher'`` (a Monte
      Carlo estimate of the GGN from that many draws).
    fsdp: run on the mesh of every device with the parameters split in
      ``fsdp`` shards and each batch over all devices (`make_mesh`,
      `place`: as training shards them); None: one device.
    vocab_chunk: the GGN's softmax by vocabulary chunks (`run_inputs`).

  Returns:
    A JSON-able dict: ``workdir``, ``step``, ``num_params``, the HVP cost
    (``hvp_cost_in_gradients``), ``eigenvalues`` (descending) with their
    ``eigenvalue_residuals``, ``eigenvalue_converged`` and ``converged``, and
    ``density`` / ``trace`` when asked, with timings, and the compiled
    product's memory (`product_memory`: ``product_memory``, with
    ``vocab_chunk`` and ``devices``).

  Raises:
    RunNotFoundError: no checkpoint at ``step`` (the message lists the
      available steps).

  Example:
    >>> from dynamics.runs import Run
    >>> checkpoint_spectrum(Run.open('runs/eos'), 1500, k=3)['eigenvalues']  # doctest: +SKIP
    [10.1, 4.2, 2.9]
  """
  log = _quiet(log)
  step, params, model_state, batches = _checkpoint(run, step, num_batches,
                                                   fsdp)
  inputs = run_inputs(run, kind, model_state, noise_std, num_samples,
                      vocab_chunk)
  op = curvature(kind, params, batches, mask=block, **inputs)
  memory = _memory(op, inputs, fsdp, log)
  num_params = sum(np.size(p) for p in jax.tree.leaves(params))
  log(f'step {step}: {num_params:,} parameters, {kind} of the loss on '
      f'{num_batches} held-out batches')

  # Cost of one HVP relative to one gradient, on one batch.
  loss = run.loss_fn(model_state)
  grad_s = seconds_per_call(jax.jit(jax.grad(loss)), params,
                            jax.tree.map(jnp.asarray, batches[0]))
  hvp_s = seconds_per_call(curvature(kind, params, batches[:1],
                                     **inputs).matvec, params)
  result: Dict[str, Any] = {
      'workdir': run.workdir, 'step': step, 'num_params': int(num_params),
      'num_batches': num_batches, 'kind': kind, 'block': block,
      **({'fisher_samples': num_samples} if kind == 'fisher' else {}),
      'grad_seconds_per_batch': grad_s, 'hvp_seconds_per_batch': hvp_s,
      'hvp_cost_in_gradients': hvp_s / grad_s, **memory}
  log(f'one HVP costs {hvp_s / grad_s:.2f} gradients '
      f'({1e3 * hvp_s:.2f} ms per batch)')
  hvps = num_iters or lanczos.default_max_matvecs(k, int(num_params))
  budget = hvps * len(batches) * hvp_s  # Lanczos: one HVP an iteration.
  log(f'estimate: the top-{k} takes at most {hvps} HVPs x {num_batches} '
      f'batches, about {_duration(budget)}'
      + (' (lower --num_batches or --num_iters for less)'
         if budget > 600 else ''))
  key = jax.random.PRNGKey(seed)

  start = time.perf_counter()
  vals, _, info = eigen.top_eigenpairs(
      op, k=k, num_iters=num_iters, tol=tol, key=key, return_info=True,
      progress=progress)
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
        op, num_probes=num_probes, num_iters=density_iters, key=key,
        return_info=True, progress=progress)
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
        op, method=trace_method, key=key, return_info=True)
    result.update(trace=estimate, trace_stderr=stderr,
                  trace_method=tinfo['method'], trace_hvps=tinfo['num_hvps'],
                  trace_seconds=time.perf_counter() - start)
    log(f'trace ({tinfo["method"]}, {tinfo["num_hvps"]} HVPs): {estimate:.5g} '
        f'+- {stderr:.2g}')
  return result
