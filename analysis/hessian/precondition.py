r"""The preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)` of adaptive
optimizers (Adam and the Adam-type optimizers of `dynamics.optim`).

``P`` is the diagonal the optimizer divides its step direction by, read off
its state; with ``optimizer=`` (``config.optimizer.name``) and ``hyper`` (its
section) the functions below pick it per optimizer (`PRECONDITIONERS`):

* Adam-likes -- adam, adamw, adamp, stable_spam, nadamw, ademamix,
  schedule_free_adamw (its base step, taken at ``z``):
  :math:`P = \sqrt{\nu / (1 - \beta_2^t)} + \epsilon`;
* adopt: :math:`P = \max(\sqrt{\nu}, \epsilon)` (no bias correction);
* sophia: :math:`P = \max(\gamma h, \epsilon)`, :math:`h` its EMA of the
  Hessian diagonal (update clipping left out);
* adafactor: the factored second moment,
  :math:`P = \sqrt{(R / \bar R) \otimes C}` on factored leaves
  (:math:`\sqrt{v}` on the others), divided by the leaf's
  :math:`\max(10^{-3}, \mathrm{RMS})` with ``multiply_by_parameter_scale``
  when the parameters are given; its update clipping is left out.

For the others (`NOT_DEFINED`: sgd, momentum, sgdp, muon, lion, signum,
prodigy) no diagonal preconditioner is defined and they raise a one-line
``ValueError``. SOAP's ``P`` is Kronecker, diagonal in its eigenbases
(`analysis.hessian.precondition_kron`, dispatched to by `preconditioned`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from analysis import lanczos as lz
from analysis.hessian import operators
from analysis.hessian.operators import Operator
from analysis.hessian import precondition_kron
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


def _state_with(opt_state: Any, field: str) -> Any:
  """The first (nested NamedTuple) state with ``field``."""
  stack = [opt_state]
  while stack:
    node = stack.pop(0)
    if field in (getattr(node, '_fields', None) or ()):
      return node
    if isinstance(node, dict):
      stack.extend(node.values())
    elif isinstance(node, (tuple, list)):
      stack.extend(node)
  raise ValueError(f'opt_state holds no state with {field!r}')


def _count(node: Any) -> int | None:
  count = getattr(node, 'count', None)
  return None if count is None else int(count)


def _adam_diagonal(opt_state, hyper, like):
  """``sqrt(nu / (1 - b2^t)) + eps``."""
  del like
  nu, count = find_second_moment(opt_state)
  count = None if count is None else int(count)
  correction = 1.0 - hyper['b2'] ** count if count else 1.0
  return (jax.tree.map(lambda n: jnp.sqrt(n / correction) + hyper['eps'], nu),
          count)


def _adopt_diagonal(opt_state, hyper, like):
  """``max(sqrt(nu), eps)``: ADOPT's normalizer (optax.contrib.scale_by_adopt)."""
  del like
  nu, count = find_second_moment(opt_state)
  return (jax.tree.map(lambda n: jnp.maximum(jnp.sqrt(n), hyper['eps']), nu),
          None if count is None else int(count))


def _sophia_diagonal(opt_state, hyper, like):
  """``max(gamma h, eps)``, ``h`` the EMA of the Hessian diagonal estimate
  (optax.contrib.scale_by_sophia; its update clipping is left out)."""
  del like
  nu, count = find_second_moment(opt_state)
  return (jax.tree.map(lambda n: jnp.maximum(hyper['gamma'] * n,
                                             hyper['eps']), nu),
          None if count is None else int(count))


def _adafactor_diagonal(opt_state, hyper, like, params=None):
  """Adafactor's factored second moment (optax.scale_by_factored_rms)."""
  from optax._src import factorized  # pylint: disable=g-import-not-at-top
  node = _state_with(opt_state, 'v_row')

  def leaf(x, v_row, v_col, v, p):
    dims = factorized._factored_dims(  # pylint: disable=protected-access
        x.shape, hyper['factored'], hyper['min_dim_size_to_factor'])
    if dims is None:
      out = jnp.sqrt(v)
    else:
      d1, d0 = dims
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row = v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)
      out = jnp.sqrt(jnp.expand_dims(row, d0) * jnp.expand_dims(v_col, d1))
    if p is not None and hyper['multiply_by_parameter_scale']:
      out = out / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p))), 1e-3)
    return out

  ps = params if params is not None else jax.tree.map(lambda _: None, like)
  diag = jax.tree.map(leaf, like, node.v_row, node.v_col, node.v, ps,
                      is_leaf=lambda x: x is None)
  return diag, _count(node)


# optimizer.name -> (opt_state, hyper, like) -> (diagonal P, count).
PRECONDITIONERS: dict[str, Callable[..., tuple[PyTree, int | None]]] = {
    **{name: _adam_diagonal for name in (
        'adam', 'adamw', 'adamp', 'stable_spam', 'nadamw', 'ademamix',
        'schedule_free_adamw')},
    'adopt': _adopt_diagonal,
    'adafactor': _adafactor_diagonal,
    'sophia': _sophia_diagonal,
}
NOT_DEFINED = {
    'sgd': 'a plain gradient step (P = I: use the sharpness)',
    'momentum': 'a plain momentum step (P = I: use the sharpness)',
    'sgdp': 'a projected momentum step (P = I: use the sharpness)',
    'muon': 'its step is orthogonalized momentum, steepest descent in the '
            'spectral norm, not a diagonal rescaling',
    'lion': 'its step is a sign, not a diagonal rescaling of the gradient',
    'signum': 'its step is a sign, not a diagonal rescaling of the gradient',
    'prodigy': 'its diagonal is scaled by its learned step size d_t, which '
               'plays the learning rate',
}


def has_preconditioner(optimizer: str) -> bool:
  """Whether `PRECONDITIONERS` (or, for soap, `precondition_kron.KRONECKER`)
  defines ``P`` for ``optimizer``."""
  return (optimizer in PRECONDITIONERS
          or optimizer in precondition_kron.KRONECKER)


def _diagonal(opt_state, optimizer, hyper, like, params=None):
  if optimizer not in PRECONDITIONERS:
    reason = NOT_DEFINED.get(optimizer, 'no preconditioner is registered in '
                             'analysis/hessian/precondition.py')
    raise ValueError(f'preconditioned sharpness is not defined for '
                     f'optimizer.name={optimizer}: {reason}')
  fn = PRECONDITIONERS[optimizer]
  if fn is _adafactor_diagonal:
    return fn(opt_state, hyper, like, params)
  return fn(opt_state, hyper, like)


def _scaled_apply(op, scale, v):
  """``D H D v`` for a diagonal ``D`` given as a pytree ``scale``."""
  hv = op(jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, v))
  return jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, hv)


def preconditioner_scale(opt_state: Any, *, b2: float | None = None,
                         eps: float = 1e-8, optimizer: str | None = None,
                         hyper: Any = None, like: PyTree = None,
                         params: PyTree = None) -> tuple[PyTree, int | None]:
  r"""``D = P^{-1/2}`` with ``P = diag(sqrt(nu_hat) + eps)`` from an Adam state.

  ``nu_hat = nu / (1 - b2**count)`` (bias-corrected as in the update) when
  ``b2`` is given, else ``nu``. With ``optimizer`` (a name of
  `PRECONDITIONERS`), ``P`` is that optimizer's, its hyperparameters read
  from ``hyper`` (its config section), ``like`` the parameters' structure
  (adafactor), ``params`` the parameters (adafactor's parameter scale).

  Returns:
    ``(D, count)``.

  Raises:
    ValueError: ``optimizer`` has no diagonal preconditioner (`NOT_DEFINED`).
  """
  if optimizer is not None:
    diag, count = _diagonal(opt_state, optimizer, hyper, like, params)
    return jax.tree.map(jax.lax.rsqrt, diag), count
  nu, count = find_second_moment(opt_state)
  correction = 1.0
  if b2 is not None and count is not None and int(count) > 0:
    correction = 1.0 - b2 ** int(count)
  scale = jax.tree.map(lambda n: jax.lax.rsqrt(jnp.sqrt(n / correction) + eps),
                       nu)
  return scale, None if count is None else int(count)


def preconditioned(op: Operator, opt_state: Any, *, b2: float | None = None,
                   eps: float = 1e-8, optimizer: str | None = None,
                   hyper: Any = None, params: PyTree = None) -> Operator:
  r"""The symmetric form :math:`P^{-1/2} C P^{-1/2}` of :math:`P^{-1} C`,
  with :math:`P = \mathrm{diag}(\sqrt{\hat\nu} + \epsilon)` from an Adam-type
  ``opt_state`` (see `preconditioner_scale`): the same eigenvalues, and
  symmetric, so every solver of this package applies. A block stays a block
  (diagonal scalings commute with the mask). ``optimizer``, ``hyper``,
  ``params``: as in `preconditioner_scale`."""
  if optimizer in precondition_kron.KRONECKER:  # SOAP: P = Q diag(D) Q^T.
    return precondition_kron.preconditioned(op, opt_state, optimizer, hyper)
  scale, _ = preconditioner_scale(opt_state, b2=b2, eps=eps,
                                  optimizer=optimizer, hyper=hyper,
                                  like=op.like, params=params)
  return op._replace(matvec=Partial(_scaled_apply, op.matvec, scale))


def preconditioned_sharpness(op: Operator, opt_state: Any, *,
                             b2: float | None = None, eps: float = 1e-8,
                             num_iters: int | None = None,
                             tol: float | None = None,
                             key: jax.Array | None = None, dtype: Any = None,
                             init_vector: PyTree | None = None,
                             min_iters: int = 1, return_info: bool = False,
                             optimizer: str | None = None, hyper: Any = None,
                             params: PyTree = None):
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
    optimizer, hyper, params: the optimizer's name and section (and the
      parameters, for adafactor's scale): its own ``P`` (`PRECONDITIONERS`;
      ``b2``, ``eps`` are then read from ``hyper``).

  Returns:
    :math:`\lambda_{\max}(P^{-1}H)` as a float (plus ``info``).

  References:
    Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (2022).
  """
  sym = preconditioned(op, opt_state, b2=b2, eps=eps, optimizer=optimizer,
                       hyper=hyper, params=params)
  out = lz.eigsh(sym.matvec, sym.like, 1, key=operators.default_key(key),
                 tol=tol, max_matvecs=num_iters, dtype=dtype,
                 init_vector=init_vector, min_iters=min_iters, mask=sym.mask,
                 dim=sym.dim, name='preconditioned_sharpness', unit='HVPs')
  value = float(out.eigvals[0])
  if not return_info:
    return value
  return value, {'num_hvps': out.num_matvecs, 'eigvec': out.eigvecs[0],
                 'converged': out.converged}
