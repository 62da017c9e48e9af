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

Conventions (all functions):
  * ``loss_fn(params, batch) -> scalar``; ``batches`` is a list (or any
    re-iterable) of batches with identical shapes, and the operator is the
    curvature of the mean of the per-batch losses, e.g. :math:`H =
    \frac{1}{B} \sum_b \nabla^2 L(\theta; \text{batch}_b)` (summed in a
    ``lax.scan``: memory does not grow with ``B``).
  * ``kind``: 'hessian', 'ggn' (pass ``model_fn`` and ``output_loss_fn``),
    'fisher' or 'empirical_fisher' (pass ``model_fn`` and a `Likelihood`);
    see `analysis.hessian.operators`.
  * Eigenvalues are sorted in descending (algebraic) order; eigenvectors are
    returned as a list of pytrees shaped like ``params``.
  * ``mask`` (a pytree of bools, a callable ``(name, leaf) -> bool``, a
    regular expression on parameter names, `dynamics.types.param_name`, or a
    key of `BLOCKS`) restricts the operator to the selected parameters: the
    spectrum is that of the diagonal block :math:`H_{SS}` (e.g. the attention
    layers). The mask is data: one compilation serves every block.
  * Parameters sharded over a mesh (FSDP) give a Lanczos basis sharded the
    same way; nothing is gathered on one device.

Modules: `operators` (the four kinds of products), `blocks` (masks, layer
groups), `eigen` (Lanczos, power iteration), `density` (SLQ density; trace by
Hutchinson, Hutch++ or XTrace; diagonal by Hutchinson or XDiag),
`estimators` (those estimators on operators), `precondition` (the
preconditioned sharpness of adaptive optimizers) and `report` (one
checkpoint's spectrum, per-block tables). The training-time probe is
`analysis.probes.SharpnessProbe`; the plots are in `analysis.plots`.

Command (loads a checkpoint, writes ``hessian_<step>_<kind>_k<k>.json`` and a
PNG plot)::

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density

(``--kind=ggn|fisher|empirical_fisher`` for another matrix, ``--trace`` for
its trace, ``--block=attention`` for one block, ``--blocks=layers`` for a
per-layer table of top eigenvalue, trace and Frobenius norm.)

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

from analysis.hessian.blocks import BLOCKS, block_mask, layer_blocks
from analysis.hessian.density import diagonal, spectral_density, trace
from analysis.hessian.eigen import power_iteration, top_eigenpairs
from analysis.hessian.operators import (KINDS, Likelihood, Operator, hvp_fn,
                                        make_operator)
from analysis.hessian.precondition import (find_second_moment,
                                           preconditioned_sharpness,
                                           preconditioner_scale)
from analysis.hessian.report import (block_report, checkpoint_blocks,
                                     checkpoint_spectrum)
from analysis.lanczos import ConvergenceWarning

__all__ = [
    'BLOCKS', 'ConvergenceWarning', 'KINDS', 'Likelihood', 'Operator',
    'block_mask', 'block_report', 'checkpoint_blocks', 'checkpoint_spectrum',
    'diagonal',
    'find_second_moment', 'hvp_fn', 'layer_blocks', 'make_operator',
    'power_iteration', 'preconditioned_sharpness', 'preconditioner_scale',
    'spectral_density', 'top_eigenpairs', 'trace',
]
