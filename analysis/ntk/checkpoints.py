"""NTK statistics of a run's checkpoints: what ``python -m analysis.ntk``
reports (the plots are `analysis.plots.ntk_report`)."""

import math
from typing import Any, Dict, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from analysis.ntk import kernel as kernel_lib
from analysis.ntk import memory
from analysis.ntk import stats
from dynamics import runs


def _select_outputs(apply_fn, outputs: str):
  """``apply_fn`` restricted to the outputs the kernel is taken over."""
  if outputs == 'all':
    return apply_fn
  if outputs != 'last':
    raise ValueError(f"outputs must be 'all' or 'last', got {outputs!r}")

  def last(params, inputs):
    out = apply_fn(params, inputs)
    return out[:, -1] if out.ndim == 3 else out
  return last


def analyze_checkpoints(run: runs.Run,
                        steps: Optional[Sequence[int]] = None, *,
                        num_examples: int = 128, num_eigs: int = 50,
                        method: str = 'auto', batch_size: Optional[int] = None,
                        outputs: str = 'all', memory_limit: Optional[int] = None,
                        progress: bool = False) -> Dict[str, Any]:
  """NTK statistics of a run's checkpoints on a fixed held-out probe set.

  Each step restores only its parameters and model state. Step 0 is the
  run's initialization (deterministic in ``config.seed``) when it has no
  checkpoint.

  Args:
    run: the run (``Run.open(workdir)``).
    steps: checkpoint steps (default: all of them).
    num_examples: probe examples (``Run.probe_batches``: held out).
    num_eigs: eigenvalues kept per step.
    method, batch_size, memory_limit, progress: see `empirical_ntk`.
    outputs: 'all' outputs, or for sequence models (outputs ``(batch, T,
      V)``) only the 'last' position's ``V`` logits (``K = V`` instead of
      ``T V``: the kernel of next-token prediction at the end of the
      context, ``T`` times cheaper).

  Returns:
    A JSON-able dict: ``steps``; per step the top ``num_eigs`` eigenvalues,
    the trace, the label alignment, the kernel distance to the first step's
    kernel and the relative parameter change from the first step; and
    ``distance_matrix`` (kernel distances between all pairs of steps).

  Raises:
    RunNotFoundError: a step without a checkpoint (other than 0), before
      anything is computed; the message lists the available steps.

  Example:
    >>> run = Run.open('runs/lazy_rich')  # doctest: +SKIP
    >>> report = analyze_checkpoints(run, [0, 2000])  # doctest: +SKIP
    >>> report['per_step'][1]['distance_from_first']  # doctest: +SKIP
    0.12
  """
  available = run.steps
  steps = list(available if steps is None else steps)
  for step in steps:
    if step != 0:  # Step 0 without a checkpoint: the initialization.
      run.resolve_step(step)
  per_batch = max(1, int(run.dataset.batch_size))
  batches = run.probe_batches(math.ceil(num_examples / per_batch))
  inputs, targets = stats.probe_examples(batches, num_examples)
  inputs = jnp.asarray(inputs)
  kernels, params, records = [], [], []
  apply_fn = None
  for step in steps:
    if step in available:
      state = run.restore(step, ('params', 'model_state'))
    else:
      init = run.init_state()
      state = {'params': init.params, 'model_state': init.model_state}
    if apply_fn is None or state['model_state']:
      # A stateless model keeps one apply_fn, hence one compilation.
      apply_fn = _select_outputs(run.apply_fn(state['model_state']), outputs)
    kernel = np.asarray(kernel_lib.empirical_ntk(
        apply_fn, state['params'], inputs, method=method,
        batch_size=batch_size, memory_limit=memory_limit, progress=progress),
        np.float64)
    k_out = memory.output_size(apply_fn, state['params'], inputs[:1])
    kernels.append(kernel)
    params.append(state['params'])
    eigs = np.linalg.eigvalsh(kernel)[::-1]
    records.append({
        'step': int(step), 'eigenvalues': eigs[:num_eigs].tolist(),
        'trace': float(np.trace(kernel)),
        'alignment': float(stats.kernel_alignment(kernel, targets,
                                                  num_classes=k_out)),
        'distance_from_first': stats.kernel_distance_np(kernels[0], kernel),
        'relative_param_change': float(stats.relative_param_change(
            params[0], state['params'])),
    })
  dist = [[stats.kernel_distance_np(a, b) for b in kernels] for a in kernels]
  return {'workdir': run.workdir, 'num_examples': num_examples,
          'outputs': outputs,
          'steps': [int(s) for s in steps], 'per_step': records,
          'distance_matrix': dist}
