"""Lanczos, power iteration and stochastic Lanczos quadrature on pytree operators.

These are the matrix-free eigensolvers behind `analysis.hessian` (and the SVD
of `analysis.jacobian`). An operator is any symmetric linear map ``matvec(v)
-> Av`` on pytrees shaped like some ``params_like``. Each solver flattens the
pytree once (inside its trace) and runs all of its iterations in one jitted
``lax.while_loop``, so a call costs one dispatch and the operator is traced
once.

To re-use a compiled solver across calls whose operator closes over new arrays
(new parameters every probe during training), pass the operator as a
`jax.tree_util.Partial`: its arrays are then traced arguments and only its
function is part of the compilation key. `analysis.hessian.hvp_fn` returns
such a ``Partial``; a plain Python function also works, compiled once per
function object.

Modules: `core` (Lanczos and its Ritz pairs), `power` (deflated power
iteration) and `quadrature` (stochastic Lanczos quadrature).
"""

from analysis.lanczos.core import (LanczosResult, LanczosRun, Matvec,
                                   as_operator, lanczos, progress_bar,
                                   ritz_vectors, run_lanczos,
                                   tridiagonal_eigh)
from analysis.lanczos.power import run_power_iteration
from analysis.lanczos.quadrature import gaussian_density, slq_nodes

__all__ = [
    'LanczosResult', 'LanczosRun', 'Matvec', 'as_operator', 'gaussian_density',
    'lanczos', 'progress_bar', 'ritz_vectors', 'run_lanczos',
    'run_power_iteration', 'slq_nodes', 'tridiagonal_eigh',
]
