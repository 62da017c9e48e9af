"""Lanczos, power iteration and stochastic Lanczos quadrature on pytree operators.

These are the matrix-free eigensolvers behind `analysis.hessian` (and the SVD
of `analysis.jacobian`). An operator is any symmetric linear map ``matvec(v)
-> Av`` on pytrees shaped like some ``params_like``. Vectors stay pytrees: a
Lanczos basis is the parameters' pytree with a leading axis, laid out (and,
with FSDP, sharded) like the parameters, never gathered on one device.

Compilation: the Lanczos loop's length is traced, so a solver compiles once
per (operator function, parameter shapes, basis size, dtype) and is reused
for any number of iterations, any ``k``, any ``which`` and any tolerance.
`eigsh` runs as one compiled call (its checks, thick restarts and deflation
blocks traced: `device`), with one read of the results at the end. To
re-use it across calls whose operator closes over new arrays (new
parameters every probe during training), pass the operator as a
`jax.tree_util.Partial`: its arrays are then traced arguments and only its
function is part of the compilation key. `analysis.hessian.hvp_fn` returns
such a ``Partial``; a plain Python function also works, compiled once per
function object.

Modules: `trees` (vector algebra on pytrees), `space` (flat or pytree
vectors), `core` (the Lanczos steps), `fixed` (`lanczos`), `eigsh`
(converged extreme eigenpairs, thick restarts: its API), `device` (its
loop in one compiled call, the default), `host` (the same loop driven from
the host, the reference), `ritz` (the host loop's Ritz pairs and residual
estimates), `memory` (`largest_model`), `power` (deflated power iteration)
and `quadrature` (batched stochastic Lanczos quadrature).
"""

from analysis.lanczos.core import (KrylovState, Matvec, as_operator,
                                   ritz_vectors, tridiagonal_eigh)
from analysis.lanczos.eigsh import (ConvergenceWarning, EigshResult,
                                    default_basis_size, default_max_matvecs,
                                    default_tol, eigsh)
from analysis.lanczos.fixed import LanczosResult, lanczos, run_steps
from analysis.lanczos.power import run_power_iteration
from analysis.lanczos.quadrature import SLQResult, gaussian_density, slq_nodes

__all__ = [
    'ConvergenceWarning', 'EigshResult', 'KrylovState', 'LanczosResult',
    'Matvec', 'SLQResult', 'as_operator', 'default_basis_size',
    'default_max_matvecs',
    'default_tol', 'eigsh', 'gaussian_density', 'lanczos', 'ritz_vectors',
    'run_power_iteration', 'run_steps', 'slq_nodes', 'tridiagonal_eigh',
]
