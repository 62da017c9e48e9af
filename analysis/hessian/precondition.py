r"""The preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)` of adaptive
optimizers (Adam and the Adam-type optimizers of `dynamics.optim`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from analysis import lanczos as lz
from analysis.hessian import operators
from analysis.hessian.operators import Operator
from dynamics.types import PyTree


def find_second_moment(opt_state: Any) -> tuple[PyTree, Any]:
  """The Adam-type second-moment estimate ``nu`` and its step ``count``.

  Walks the (nested NamedTuple) optimizer state for the first state with a
  ``nu`` field, as in `optax.scale_by_adam` and the optimizers of
  `dynamics.optim` built from it.

  Returns:
    ``(nu, count)``, ``count`` None if that state has none.

  Raises:
    ValueError: if the state holds no ``nu`` (not an adaptive optimizer).

  Example:
    >>> import optax
    >>> state = optax.adam(1e-3).init(jnp.zeros(2))
    >>> nu, count = find_second_moment(state)
    >>> nu, int(count)
    (Array([0., 0.], dtype=float32), 0)
  """
  stack = [opt_state]
  while stack:
    node = stack.pop(0)
    fields = getattr(node, '_fields', None)
    if fields is not None and 'nu' in fields:
      return node.nu, getattr(node, 'count', None)
    if isinstance(node, dict):
      stack.extend(node.values())
    elif isinstance(node, (tuple, list)):
      stack.extend(node)
  raise ValueError(
      'opt_state has no Adam-type second moment `nu`: preconditioned sharpness '
      'is defined for adam, adamw, adamp and stable_spam states')


def _scaled_apply(op, scale, v):
  """``D H D v`` for a diagonal ``D`` given as a pytree ``scale``."""
  hv = op(jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, v))
  return jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, hv)


def preconditioner_scale(opt_state: Any, *, b2: float | None = None,
                         eps: float = 1e-8) -> tuple[PyTree, int | None]:
  r"""``D = P^{-1/2}`` with ``P = diag(sqrt(nu_hat) + eps)`` from an Adam state.

  ``nu_hat = nu / (1 - b2**count)`` (bias-corrected as in the update) when
  ``b2`` is given, else ``nu``.

  Returns:
    ``(D, count)``.
  """
  nu, count = find_second_moment(opt_state)
  correction = 1.0
  if b2 is not None and count is not None and int(count) > 0:
    correction = 1.0 - b2 ** int(count)
  scale = jax.tree.map(lambda n: jax.lax.rsqrt(jnp.sqrt(n / correction) + eps),
                       nu)
  return scale, None if count is None else int(count)


def preconditioned(op: Operator, opt_state: Any, *, b2: float | None = None,
                   eps: float = 1e-8) -> Operator:
  r"""The symmetric form :math:`P^{-1/2} C P^{-1/2}` of :math:`P^{-1} C`,
  with :math:`P = \mathrm{diag}(\sqrt{\hat\nu} + \epsilon)` from an Adam-type
  ``opt_state`` (see `preconditioner_scale`): the same eigenvalues, and
  symmetric, so every solver of this package applies. A block stays a block
  (diagonal scalings commute with the mask)."""
  scale, _ = preconditioner_scale(opt_state, b2=b2, eps=eps)
  return op._replace(matvec=Partial(_scaled_apply, op.matvec, scale))


def preconditioned_sharpness(op: Operator, opt_state: Any, *,
                             b2: float | None = None, eps: float = 1e-8,
                             num_iters: int | None = None,
                             tol: float | None = None,
                             key: jax.Array | None = None, dtype: Any = None,
                             init_vector: PyTree | None = None,
                             min_iters: int = 1, return_info: bool = False):
  r"""Top eigenvalue of the preconditioned Hessian :math:`P^{-1} H`.

  For an Adam-type update :math:`\theta \leftarrow \theta - \eta P^{-1} m`
  with :math:`P = \mathrm{diag}(\sqrt{\hat\nu} + \epsilon)`, the stability
  threshold of the preconditioned quadratic is
  :math:`\lambda_1(P^{-1}H) < (2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η for
  β1 = 0.9), at which adaptive methods hover ("Adaptive Edge of Stability").
  :math:`P^{-1}H` is similar to the symmetric :math:`P^{-1/2} H P^{-1/2}`
  (`preconditioned`), so Lanczos applies.

  Args:
    op, key, dtype: as in `top_eigenpairs` (``op`` the Hessian, or any
      curvature :math:`C`: then :math:`\lambda_{\max}(P^{-1}C)`).
    opt_state: optimizer state holding a second moment ``nu`` (`optax.adam`,
      `optax.adamw`, `dynamics.optim`'s Adam-type optimizers).
    b2: the optimizer's second-moment decay, for bias correction (None: use
      ``nu`` as is).
    eps: the optimizer's epsilon.
    num_iters: maximum HVPs (None: `analysis.lanczos.default_max_matvecs`).
    tol: relative residual at which to stop (None: the dtype's default).
    init_vector: warm start (a previous eigenvector, in the symmetric basis).
    min_iters: never stop before this many HVPs.
    return_info: also return ``{'num_hvps', 'eigvec', 'converged'}``.

  Returns:
    :math:`\lambda_{\max}(P^{-1}H)` as a float (plus ``info``).

  References:
    Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (2022).
  """
  sym = preconditioned(op, opt_state, b2=b2, eps=eps)
  out = lz.eigsh(sym.matvec, sym.like, 1, key=operators.default_key(key),
                 tol=tol, max_matvecs=num_iters, dtype=dtype,
                 init_vector=init_vector, min_iters=min_iters, mask=sym.mask,
                 dim=sym.dim, name='preconditioned_sharpness', unit='HVPs')
  value = float(out.eigvals[0])
  if not return_info:
    return value
  return value, {'num_hvps': out.num_matvecs, 'eigvec': out.eigvecs[0],
                 'converged': out.converged}
