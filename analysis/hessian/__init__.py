r"""Hessian spectra of training losses: eigenpairs, densities, traces, sharpness.

Everything here is matrix-free: the Hessian is only touched through
Hessian-vector products (HVPs), so the same code gives the exact top
eigenvalues of a 500-parameter MLP (tested against ``jnp.linalg.eigh``) and
runs on models where a dense Hessian is unthinkable.

Conventions (all functions):
  * ``loss_fn(params, batch) -> scalar``; ``batches`` is a list (or any
    re-iterable) of batches with identical shapes, and the operator is the
    Hessian of the mean of the per-batch losses, :math:`H = \frac{1}{B}
    \sum_b \nabla^2 L(\theta; \text{batch}_b)`.
  * Eigenvalues are sorted in descending (algebraic) order; eigenvectors are
    returned as a list of pytrees shaped like ``params``.
  * ``mask`` (a pytree of bools, a callable ``(name, leaf) -> bool``, a
    regular expression on parameter names, `dynamics.types.param_name`, or a
    key of `BLOCKS`) restricts the operator to the selected parameters: the
    spectrum is that of the diagonal block :math:`H_{SS}` (e.g. the attention
    layers).

Modules: `operators` (HVP and Gauss-Newton products, blocks), `eigen`
(Lanczos, power iteration), `density` (SLQ density, Hutchinson's trace),
`precondition` (the preconditioned sharpness of adaptive optimizers) and
`report` (one checkpoint's spectrum). The training-time probe is
`analysis.probes.SharpnessProbe`; the plots are in `analysis.plots`.

Command (loads a checkpoint, writes ``hessian_<step>.json`` and a PNG plot)::

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density

(``--kind=ggn`` for the generalized Gauss-Newton matrix instead, ``--trace``
for Hutchinson's trace, ``--block=attention`` for one block.)

References:
  Pearlmutter, "Fast Exact Multiplication by the Hessian" (1994).
  Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
  via Hessian Eigenvalue Density" (ICML 2019).
  Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the
  Lens of the Hessian" (2020).
  Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability" (ICLR 2021).
  Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (2022).
"""

from analysis.hessian.density import spectral_density, trace
from analysis.hessian.eigen import power_iteration, top_eigenpairs
from analysis.hessian.operators import (BLOCKS, Operator, block_mask, hvp_fn,
                                        make_operator)
from analysis.hessian.precondition import (find_second_moment,
                                           preconditioned_sharpness,
                                           preconditioner_scale)
from analysis.hessian.report import checkpoint_spectrum

__all__ = [
    'BLOCKS', 'Operator', 'block_mask', 'checkpoint_spectrum',
    'find_second_moment', 'hvp_fn', 'make_operator', 'power_iteration',
    'preconditioned_sharpness', 'preconditioner_scale', 'spectral_density',
    'top_eigenpairs', 'trace',
]
