r"""Curvature of training losses: eigenpairs, densities, traces, diagonals,
per-layer tables -- of the Hessian, the Gauss-Newton matrix and the Fishers.

Everything here is matrix-free: a curvature matrix is only touched through
matrix-vector products (HVPs), so the same code gives the exact top
eigenvalues of a 500-parameter MLP (tested against ``jnp.linalg.eigh``) and
runs on models where a dense Hessian is unthinkable.

Answers you need not second-guess: every iterative routine stops on a
tolerance that fits the dtype (relative residual 1e-5 in float32, 1e-9 in
float64) under a cap that grows with ``k`` and the size, and warns
(`ConvergenceWarning`) -- with ``info['converged'] = False`` -- when the cap
comes first. The Lanczos loop is compiled once per operator and parameter
shapes, whatever ``k``, ``num_iters`` or ``tol``.

A curvature matrix is a value, an `Operator`: build it once, pass it to any
solver::

  op = curvature('hessian', params, batches, loss_fn=loss_fn)
  vals, vecs = top_eigenpairs(op, k=5)
  estimate, stderr = trace(op)
  grid, density = spectral_density(op)
  rows = block_report(op, blocks='layers')

or from a run's checkpoint, ``run_curvature(run, 'ggn', step)``.

Conventions (all functions):
  * ``loss_fn(params, batch) -> scalar``; ``batches`` is a list (or any
    re-iterable) of batches with identical shapes, and the operator is the
    curvature of the mean of the per-batch losses, e.g. :math:`H =
    \frac{1}{B} \sum_b \nabla^2 L(\theta; \text{batch}_b)` (summed in a
    ``lax.scan``: memory does not grow with ``B``).
  * ``kind``: a key of `registry.PRODUCTS` -- 'hessian' (pass ``loss_fn``),
    'ggn' (``model_fn`` and ``output_loss_fn``), 'fisher' or
    'empirical_fisher' (``model_fn`` and a `Likelihood`). A new matrix is one
    product function and one entry there.
  * Eigenvalues are sorted in descending (algebraic) order; eigenvectors are
    returned as a list of pytrees shaped like ``params``.
  * ``op.restrict(select)`` (or ``curvature(..., mask=select)``; ``select``
    a pytree of bools, a callable ``(name, leaf) -> bool``, a regular
    expression on parameter names, `dynamics.types.param_name`, or a key of
    `BLOCKS`) restricts the operator to the selected parameters: the
    spectrum is that of the diagonal block :math:`H_{SS}` (e.g. the attention
    layers). The mask is data: one compilation serves every block.
  * Parameters sharded over a mesh (FSDP) give a Lanczos basis sharded the
    same way; nothing is gathered on one device.

Modules: `registry` (the names: curvature products, trace and diagonal
estimators), `operators` (`curvature`, `Operator`), `likelihood`, `blocks`
(masks, layer groups), `kfac` and `kfac_layers` (KFAC and EKFAC of Flax
models, found without layer tags), `eigen` (Lanczos, power iteration), `density` (SLQ
density; trace by Hutchinson, Hutch++ or XTrace; diagonal by Hutchinson or
XDiag), `estimators` (those estimators on operators), `precondition` (the
preconditioned sharpness of adaptive optimizers), `report` (per-block
tables) and `checkpoints` (a run's checkpoint: `run_curvature`, its
spectrum, its blocks). Nothing prints unless given a ``log``. The
training-time probe is `analysis.probes.SharpnessProbe`; the plots are in
`analysis.plots`.

The public names below are loaded on first use, so that ``python -m
analysis.hessian --help`` (which imports this package first) answers before
JAX starts.

Command (loads a checkpoint, writes ``hessian_<step>_<kind>_k<k>.json`` and a
PNG plot)::

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density

(``--kind=ggn`` or another key of `registry.PRODUCTS` for another matrix,
``--trace`` for its trace, ``--block=attention`` for one block,
``--blocks=layers`` for a per-layer table of top eigenvalue, trace and
Frobenius norm.)

References:
  Pearlmutter, "Fast Exact Multiplication by the Hessian" (1994).
  Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
  via Hessian Eigenvalue Density" (ICML 2019).
  Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the
  Lens of the Hessian" (2020).
  Martens, "New Insights and Perspectives on the Natural Gradient Method"
  (JMLR 2020) -- the GGN, the Fisher and the empirical Fisher.
  Meyer, Musco, Musco & Woodruff, "Hutch++" (2021); Epperly, Tropp & Webber,
  "XTrace" (SIMAX 2024).
  Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability" (ICLR 2021).
"""

import importlib
from typing import Any

from analysis.hessian.registry import (DIAGONAL_METHODS, KINDS, PRODUCTS,
                                       TRACE_METHODS)

# Public name -> the submodule defining it (imported on first use).
_LAZY = {
    'BLOCKS': 'blocks', 'block_mask': 'blocks', 'layer_blocks': 'blocks',
    'Likelihood': 'likelihood',
    'Operator': 'operators', 'curvature': 'operators', 'hvp_fn': 'operators',
    'top_eigenpairs': 'eigen', 'power_iteration': 'eigen',
    'spectral_density': 'density', 'trace': 'density', 'diagonal': 'density',
    'find_second_moment': 'precondition', 'preconditioned': 'precondition',
    'preconditioned_sharpness': 'precondition',
    'preconditioner_scale': 'precondition',
    'has_preconditioner': 'precondition',
    'block_report': 'report',
    'run_curvature': 'checkpoints', 'run_inputs': 'checkpoints',
    'checkpoint_spectrum': 'checkpoints', 'checkpoint_blocks': 'checkpoints',
}
_LAZY_FROM = {'ConvergenceWarning': 'analysis.lanczos'}
_SUBMODULES = ('blocks', 'checkpoints', 'density', 'eigen', 'estimators',
               'likelihood', 'operators', 'precondition', 'registry', 'report')


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _LAZY:
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
  elif name in _LAZY_FROM:
    module = importlib.import_module(_LAZY_FROM[name])
  else:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = globals()[name] = getattr(module, name)
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))


__all__ = sorted(['DIAGONAL_METHODS', 'KINDS', 'PRODUCTS', 'TRACE_METHODS',
                  *_LAZY, *_LAZY_FROM])
