r"""Preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)` for Kronecker
(eigenbasis) preconditioners: SOAP (`dynamics.optim.soap`).

SOAP runs Adam in the eigenbasis of Shampoo's factors. Per parameter leaf
with eigenbases :math:`Q_1, \dots, Q_k` (one per preconditioned axis of the
leaf's preconditioner shape, the identity on the others; for a matrix
:math:`Q_L, Q_R`) and second moment :math:`v` kept in that basis, its step
is :math:`\eta\, \mathcal{Q}\, \hat m / D`, so

.. math::

   P = \mathcal{Q}\, \mathrm{diag}(D)\, \mathcal{Q}^\top, \qquad
   \mathcal{Q} = Q_1 \otimes \cdots \otimes Q_k, \qquad
   D = (\sqrt{v} + \epsilon) / \sqrt{1 - \beta_2^{t}},

with the bias correction as the authors' code applies it (on the step
size: :math:`\epsilon` is not corrected; ``correct_bias=False`` drops
:math:`\sqrt{1-\beta_2^t}`) and :math:`t` the Adam step of the last update
(the state's call count minus the first call, which only builds the bases).
The bases and :math:`v` are the state's: those the next step projects with.
``normalize_grads`` (a rescaling by the direction's RMS, not a fixed
preconditioner) is left out.

:math:`P^{-1/2} x` rotates :math:`x` into the eigenbasis
(:math:`x \times_j Q_j^\top`), scales it by :math:`D^{-1/2}` and rotates it
back; :math:`P^{-1/2} H P^{-1/2}` is symmetric with the eigenvalues of
:math:`P^{-1}H`, so every solver of `analysis.hessian` applies. Blocks stay
blocks (the rotation is within a leaf, masks are per leaf).

References:
  Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam",
  arXiv:2409.11321 (2024). Cohen et al., "Adaptive Gradient Methods at the
  Edge of Stability" (2022).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from analysis.hessian.operators import Operator
from dynamics.optim.soap import _project  # pylint: disable=protected-access
from dynamics.optim.soap import layout
from dynamics.types import PyTree

# (shape seen by the preconditioner, whether each of its axes has a basis).
Plan = Tuple[Tuple[int, ...], Tuple[bool, ...]]


def find_soap_state(opt_state: Any) -> Any:
  """The first (nested NamedTuple) state holding SOAP's ``bases`` and ``nu``.

  Raises:
    ValueError: no SOAP state in ``opt_state``.
  """
  stack = [opt_state]
  while stack:
    node = stack.pop(0)
    if {'bases', 'nu', 'count'} <= set(getattr(node, '_fields', None) or ()):
      return node
    if isinstance(node, dict):
      stack.extend(node.values())
    elif isinstance(node, (tuple, list)):
      stack.extend(node)
  raise ValueError('opt_state holds no SOAP state (ScaleBySoapState): not a '
                   'soap run')


def soap_factors(opt_state: Any, hyper: Any, like: PyTree
                 ) -> tuple[list[Plan], list[tuple[jax.Array, ...]],
                            list[jax.Array], int]:
  r"""Per leaf of ``like``: its plan, eigenbases and the diagonal ``D`` of
  ``P`` in the eigenbasis (shaped like the plan), and the Adam step ``t``.

  Args:
    opt_state: a soap optimizer state (after at least one step).
    hyper: soap's section (``b2``, ``eps``, ``max_precond_dim``,
      ``merge_dims``, ``precondition_1d``, ``correct_bias``).
    like: the parameters (their structure and shapes).

  Returns:
    ``(plans, bases, diagonals, t)``, lists in ``like``'s leaf order.

  Raises:
    ValueError: before the first step (``t = 0``: ``v = 0``), or a state
      whose bases do not match ``hyper``'s layout.
  """
  node = find_soap_state(opt_state)
  t = int(node.count) - 1
  if t < 1:
    raise ValueError(
        f'preconditioned sharpness of soap needs a step: its state has made '
        f'{int(node.count)} call(s), and the first only builds the bases')
  leaves, treedef = jax.tree.flatten(like)
  nus = treedef.flatten_up_to(node.nu)
  bases = [tuple(b) for b in treedef.flatten_up_to(node.bases)]
  plans, diagonals = [], []
  correction = (1.0 - hyper['b2'] ** t) ** 0.5 if hyper['correct_bias'] else 1.0
  for leaf, nu, qs in zip(leaves, nus, bases):
    shape, flags = layout(jnp.shape(leaf), hyper['max_precond_dim'],
                          hyper['merge_dims'], hyper['precondition_1d'])
    sizes = tuple(s for s, f in zip(shape, flags) if f)
    if tuple(q.shape for q in qs) != tuple((s, s) for s in sizes):
      raise ValueError(
          f'soap state bases {[tuple(q.shape) for q in qs]} do not match the '
          f'layout of a {tuple(jnp.shape(leaf))} parameter under '
          f'optimizer.soap (max_precond_dim={hyper["max_precond_dim"]}, '
          f'merge_dims={hyper["merge_dims"]}, '
          f'precondition_1d={hyper["precondition_1d"]})')
    plans.append((shape, flags))
    diagonals.append((jnp.sqrt(nu.reshape(shape)) + hyper['eps'])
                     / correction)
  return plans, bases, diagonals, t


@dataclasses.dataclass(frozen=True)
class _KronInverseSqrt:
  """``(matvec, bases, inv_sqrt, v) -> S C S v``, ``S = P^{-1/2}``; the plans
  are static (hashable), so equal layouts share one compilation."""
  plans: Tuple[Plan, ...]

  def apply(self, bases, inv_sqrt, v):
    leaves, treedef = jax.tree.flatten(v)
    out = []
    for x, (shape, flags), qs, s in zip(leaves, self.plans, bases, inv_sqrt):
      dtype = jnp.promote_types(x.dtype, s.dtype)
      y = _project(x.astype(dtype).reshape(shape), qs, flags, back=False)
      y = _project(y * s, qs, flags, back=True)
      out.append(y.reshape(x.shape).astype(x.dtype))
    return jax.tree.unflatten(treedef, out)

  def __call__(self, matvec, bases, inv_sqrt, v):
    return self.apply(bases, inv_sqrt, matvec(self.apply(bases, inv_sqrt, v)))


def soap_inverse_sqrt(opt_state: Any, hyper: Any, like: PyTree
                      ) -> Partial:
  r"""``x -> P^{-1/2} x`` for SOAP's ``P`` (module docstring), on pytrees
  like ``like``.

  Example:
    >>> import optax
    >>> from dynamics.optim.soap import soap
    >>> params = {'w': jnp.ones((3, 2))}
    >>> tx = soap(0.1, b2=0.9, weight_decay=0.0)
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   _, state = tx.update({'w': jnp.arange(6.).reshape(3, 2)}, state)
    >>> hyper = dict(b2=0.9, eps=1e-8, max_precond_dim=10000,
    ...              merge_dims=False, precondition_1d=False,
    ...              correct_bias=True)
    >>> s = soap_inverse_sqrt(state, hyper, params)
    >>> s(params)['w'].shape
    (3, 2)
  """
  plans, bases, diagonals, _ = soap_factors(opt_state, hyper, like)
  kron = _KronInverseSqrt(tuple(plans))
  return Partial(kron.apply, bases, [jax.lax.rsqrt(d) for d in diagonals])


def preconditioned(op: Operator, opt_state: Any, optimizer: str,
                   hyper: Any) -> Operator:
  r""":math:`P^{-1/2} C P^{-1/2}` for ``op`` (:math:`C`) and the Kronecker
  preconditioner of ``optimizer`` (`KRONECKER`), read off ``opt_state`` with
  ``hyper`` (its config section).

  Raises:
    ValueError: ``optimizer`` not in `KRONECKER`, or as `soap_factors`.
  """
  if optimizer not in KRONECKER:
    raise ValueError(f'optimizer.name={optimizer} has no Kronecker '
                     f'preconditioner (analysis/hessian/precondition_kron.py)')
  plans, bases, diagonals, _ = KRONECKER[optimizer](opt_state, hyper, op.like)
  inv_sqrt = [jax.lax.rsqrt(d) for d in diagonals]
  return op._replace(matvec=Partial(_KronInverseSqrt(tuple(plans)), op.matvec,
                                    bases, inv_sqrt))


# optimizer.name -> (opt_state, hyper, like) -> (plans, bases, diagonals, t).
KRONECKER = {'soap': soap_factors}
