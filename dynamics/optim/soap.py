r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024).

For a matrix parameter with gradient :math:`G_t`, SOAP keeps Shampoo's two
factors :math:`L_t = \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top` and
:math:`R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t`, their eigenbases
:math:`Q_L, Q_R`, and runs Adam on the rotated gradient
:math:`G'_t = Q_L^\top G_t Q_R`:

.. math::

   m_t &= \beta_1 m_{t-1} + (1-\beta_1) G'_t, \qquad
   v_t = \beta_2 v_{t-1} + (1-\beta_2) G'^{\,2}_t, \\
   W_t &= \bigl(W_{t-1} - \eta_t c_t\, Q_L \tfrac{m_t}{\sqrt{v_t}+\epsilon}
          Q_R^\top\bigr)(1 - \eta_t \lambda), \qquad
   c_t = \sqrt{1-\beta_2^t} / (1-\beta_1^t).

A tensor of any rank gets one factor per axis (a vector none unless
``precondition_1d``); an axis longer than ``max_precond_dim`` gets none (its
basis is the identity); with ``merge_dims`` adjacent axes are first merged
while their product stays within ``max_precond_dim``.

The semantics follow the authors' released PyTorch code (``nikhilvyas/SOAP``,
``soap.py`` at commit ``f42d296``) step for step, where it and the paper's
pseudo-code differ:

* **The first call only builds the preconditioner.** It accumulates
  :math:`(1-\beta_s) G_0 G_0^\top` (and the other factors), takes the first
  eigenbases from ``eigh`` (eigenvalues descending) and returns a zero update
  (no step, no weight decay); Adam's step count and bias correction start at
  the second call, ``t = 1``.
* **The factors are updated after the step**, so a step never projects with
  bases that saw its own gradient.
* **Eigenbasis refresh** (when ``t % precondition_frequency == 0``, after the
  factor update): one step of power iteration and a QR decomposition,
  :math:`Q \leftarrow \operatorname{qr}(P\, Q[:, \pi])` with :math:`\pi` the
  columns sorted by the estimated eigenvalues
  :math:`\operatorname{diag}(Q^\top P Q)`, descending. The second moment
  :math:`v` is only permuted by :math:`\pi` along that axis (not rotated),
  while the first moment, kept in the eigenbasis, is rotated into the new
  one. (The reference rotates :math:`m` back and forth around every factor
  update; between refreshes that is the identity, done here only when the
  basis changes.)
* **Weight decay comes after the step**, on the updated weights, with the
  unscaled rate :math:`\eta_t \lambda` (no bias-correction factor).
* ``normalize_grads`` divides the preconditioned direction by its RMS
  (``+1e-30``) before the step; ``correct_bias=False`` sets :math:`c_t = 1`;
  ``shampoo_beta=None`` uses :math:`\beta_2` for the factors (the code's
  ``-1``).

Factors and bases are float32 at least. The state holds the moments shaped
like the parameters (so sharded like them) and per matrix leaf one ``(d, d)``
factor and basis per preconditioned axis.

References:
  Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade.
  "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321
  (2024). Code: https://github.com/nikhilvyas/SOAP.
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from dynamics import errors
from dynamics.optim.adamp import (ScalarOrSchedule, check_learning_rate,
                                  check_nonnegative, check_unit_interval)
from dynamics.types import PyTree

# Which leaves weight decay acts on: a bool pytree or ``params -> pytree``.
Mask = Optional[Union[PyTree, Callable[[PyTree], PyTree]]]


class ScaleBySoapState(NamedTuple):
  """State of `scale_by_soap`.

  Attributes:
    count: calls so far; Adam's step at a call is its ``count``.
    mu: first moment, per leaf, in the leaf's eigenbasis (leaf-shaped).
    nu: second moment, per leaf, in the eigenbasis (leaf-shaped).
    factors: per leaf a tuple of Shampoo factors, one ``(d, d)`` matrix per
      preconditioned axis (``L``, ``R`` for a matrix; ``()`` for none).
    bases: per leaf the matching tuple of eigenbases ``Q``.
  """
  count: jax.Array
  mu: PyTree
  nu: PyTree
  factors: PyTree
  bases: PyTree


def merged_shape(shape: Tuple[int, ...], max_precond_dim: int
                 ) -> Tuple[int, ...]:
  """The reference's ``merge_dims``: adjacent axes multiplied together while
  the product stays ``<= max_precond_dim``.

  Example:
    >>> merged_shape((128, 64, 3, 3), 10000)
    (8192, 9)
    >>> merged_shape((128, 64, 3, 3), 1000)
    (128, 576)
  """
  out, current = [], 1
  for size in shape:
    if current * size > max_precond_dim:
      if current > 1:
        out.append(current)
        current = size
      else:
        out.append(size)
        current = 1
    else:
      current *= size
  if current > 1 or not out:
    out.append(current)
  return tuple(out)


def layout(shape: Tuple[int, ...], max_precond_dim: int, merge_dims: bool,
           precondition_1d: bool) -> Tuple[Tuple[int, ...], Tuple[bool, ...]]:
  """``(shape seen by the preconditioner, whether each of its axes has one)``.

  A vector has a factor only with ``precondition_1d`` (and is never merged);
  any axis longer than ``max_precond_dim`` has none.

  Example:
    >>> layout((4, 20000), 10000, False, False)
    ((4, 20000), (True, False))
  """
  shape = tuple(shape)
  if len(shape) == 1:
    return shape, (precondition_1d and shape[0] <= max_precond_dim,)
  if merge_dims and shape:
    shape = merged_shape(shape, max_precond_dim)
  return shape, tuple(s <= max_precond_dim for s in shape)


def _project(x: jax.Array, bases: Tuple[jax.Array, ...],
             flags: Tuple[bool, ...], back: bool) -> jax.Array:
  """``x ×_k Q_k^T`` over the preconditioned axes (``back``: ``x ×_k Q_k``).

  Each axis in turn is contracted (or, without a basis, moved) to the end,
  as the reference's ``tensordot`` loop, so the axes come back in order.
  """
  bases = iter(bases)
  for has_basis in flags:
    if has_basis:
      x = jnp.tensordot(x, next(bases), axes=([0], [1 if back else 0]))
    else:
      x = jnp.moveaxis(x, 0, -1)
  return x


def _outer(g: jax.Array, flags: Tuple[bool, ...]) -> Tuple[jax.Array, ...]:
  """Per preconditioned axis ``k``: ``g`` contracted with itself over every
  other axis (``G G^T`` and ``G^T G`` for a matrix)."""
  out = []
  for k, has_basis in enumerate(flags):
    if has_basis:
      others = [a for a in range(g.ndim) if a != k]
      out.append(jnp.tensordot(g, g, axes=(others, others)))
  return tuple(out)


def _first_basis(factor: jax.Array) -> jax.Array:
  """Eigenvectors of ``factor``, eigenvalues descending (``eigh``, flipped)."""
  eye = jnp.eye(factor.shape[0], dtype=factor.dtype)
  return jnp.linalg.eigh(factor + 1e-30 * eye)[1][:, ::-1]


def _refresh(factors, bases, mu, nu, flags):
  """One power-iteration + QR step per basis; ``nu`` permuted to match and
  ``mu`` rotated from the old bases to the new ones."""
  new_bases, i = [], 0
  for axis, has_basis in enumerate(flags):
    if not has_basis:
      continue
    p, q = factors[i], bases[i]
    estimated = jnp.einsum('ij,ij->j', q, p @ q)  # diag(Q^T P Q)
    order = jnp.argsort(estimated, descending=True)
    nu = jnp.take(nu, order, axis=axis)
    new_bases.append(jnp.linalg.qr(p @ q[:, order])[0])
    i += 1
  new_bases = tuple(new_bases)
  mu = _project(_project(mu, bases, flags, back=True), new_bases, flags,
                back=False)
  return new_bases, mu, nu


def scale_by_soap(b1: float = 0.95, b2: float = 0.95,
                  shampoo_beta: Optional[float] = None, eps: float = 1e-8,
                  precondition_frequency: int = 10,
                  max_precond_dim: int = 10000, merge_dims: bool = False,
                  precondition_1d: bool = False,
                  normalize_grads: bool = False, correct_bias: bool = True
                  ) -> optax.GradientTransformation:
  r"""SOAP's direction :math:`c_t\, Q_L \frac{m_t}{\sqrt{v_t}+\epsilon} Q_R^\top`
  (zero on the first call), to be scaled by :math:`-\eta_t`.

  Args: as `soap` (without the learning rate and weight decay). Returns: an
  ``optax.GradientTransformation`` with state `ScaleBySoapState`.
  """
  check_unit_interval('b1', b1)
  check_unit_interval('b2', b2)
  beta_s = b2 if shampoo_beta is None else shampoo_beta
  check_unit_interval('shampoo_beta', beta_s)
  check_nonnegative('eps', eps)
  for name, value in (('precondition_frequency', precondition_frequency),
                      ('max_precond_dim', max_precond_dim)):
    if int(value) < 1:
      raise ValueError(f'{name} must be >= 1, got {value}')

  plan = lambda leaf: layout(jnp.shape(leaf), max_precond_dim, merge_dims,
                             precondition_1d)

  def stat_dtype(leaf):
    return jnp.promote_types(leaf.dtype, jnp.float32)

  def init_fn(params):
    def factors(p):
      shape, flags = plan(p)
      return tuple(jnp.zeros((s, s), stat_dtype(p))
                   for s, f in zip(shape, flags) if f)

    zeros = lambda p: jnp.zeros(p.shape, stat_dtype(p))
    eyes = lambda p: tuple(jnp.eye(len(f), dtype=f.dtype) for f in factors(p))
    return ScaleBySoapState(
        count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
        nu=jax.tree.map(zeros, params), factors=jax.tree.map(factors, params),
        bases=jax.tree.map(eyes, params))

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
    factors = treedef.flatten_up_to(state.factors)
    bases = treedef.flatten_up_to(state.bases)
    plans = [plan(g) for g in leaves]
    grads = [g.astype(stat_dtype(g)).reshape(shape)
             for g, (shape, _) in zip(leaves, plans)]

    def accumulate(fs, g, flags):
      return tuple(f + (1 - beta_s) * (o - f)  # torch's lerp_
                   for f, o in zip(fs, _outer(g, flags)))

    def first(_):
      new_factors = [accumulate(fs, g, flags) for fs, g, (_, flags)
                     in zip(factors, grads, plans)]
      new_bases = [tuple(_first_basis(f) for f in fs) for fs in new_factors]
      out = [jnp.zeros_like(g) for g in leaves]
      return out, mus, nus, new_factors, new_bases

    def step(_):
      t = state.count.astype(jnp.result_type(float))
      scale = 1.0
      if correct_bias:
        scale = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
      out, new_mu, new_nu, new_factors = [], [], [], []
      for g, leaf, m, v, fs, qs, (shape, flags) in zip(
          grads, leaves, mus, nus, factors, bases, plans):
        rotated = _project(g, qs, flags, back=False)
        m = b1 * m.reshape(shape) + (1 - b1) * rotated
        v = b2 * v.reshape(shape) + (1 - b2) * rotated ** 2
        direction = _project(m / (jnp.sqrt(v) + eps), qs, flags, back=True)
        if normalize_grads:
          direction = direction / (1e-30 + jnp.sqrt(jnp.mean(direction ** 2)))
        out.append((scale * direction).reshape(leaf.shape).astype(leaf.dtype))
        new_mu.append(m)
        new_nu.append(v)
        new_factors.append(accumulate(fs, g, flags))

      def refresh(operand):  # -> [bases], [mu], [nu]
        return [list(x) for x in zip(*[
            _refresh(fs, qs, m, v, flags) for m, v, fs, qs, (_, flags)
            in zip(*operand, new_factors, bases, plans)])]

      new_bases, new_mu, new_nu = jax.lax.cond(
          state.count % precondition_frequency == 0, refresh,
          lambda operand: [list(bases), *operand], (new_mu, new_nu))
      new_mu = [m.reshape(l.shape) for m, l in zip(new_mu, mus)]
      new_nu = [v.reshape(l.shape) for v, l in zip(new_nu, nus)]
      return out, new_mu, new_nu, new_factors, new_bases

    out, mu, nu, new_factors, new_bases = jax.lax.cond(
        state.count == 0, first, step, None)
    unflatten = lambda xs: jax.tree.unflatten(treedef, xs)
    return unflatten(out), ScaleBySoapState(
        count=optax.safe_increment(state.count), mu=unflatten(mu),
        nu=unflatten(nu), factors=unflatten(new_factors),
        bases=unflatten(new_bases))

  return optax.GradientTransformation(init_fn, update_fn)


ScaleAndDecayState = optax.ScaleByScheduleState  # Its call count.


def _scale_and_decay_after_step(
    learning_rate: ScalarOrSchedule, weight_decay: float, mask: Mask
) -> optax.GradientTransformation:
  r"""``u = -η d``, then decay of the stepped weights:
  ``u - η λ (w + u)``; nothing on the first call (the reference skips it)."""

  def init_fn(params):
    del params
    return ScaleAndDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = jax.tree.map(lambda d: (-lr * d).astype(d.dtype), updates)
    if weight_decay:
      if params is None:
        raise ValueError('soap with weight_decay needs params in update()')
      decay = jax.tree.map(lambda _: True, params) if mask is None else (
          mask(params) if callable(mask) else mask)
      rate = jnp.where(state.count > 0, lr * weight_decay, 0.0)
      updates = jax.tree.map(
          lambda u, w, on: (u - rate * (w + u)).astype(u.dtype) if on else u,
          updates, params, decay)
    return updates, ScaleAndDecayState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def soap(learning_rate: ScalarOrSchedule = 3e-3, b1: float = 0.95,
         b2: float = 0.95, shampoo_beta: Optional[float] = None,
         eps: float = 1e-8, weight_decay: float = 0.01,
         precondition_frequency: int = 10, max_precond_dim: int = 10000,
         merge_dims: bool = False, precondition_1d: bool = False,
         normalize_grads: bool = False, correct_bias: bool = True,
         weight_decay_mask: Mask = None) -> optax.GradientTransformation:
  r"""SOAP (Vyas et al., 2024), the authors' reference step for step.

  See the module docstring for the update rule and where the code differs
  from the paper.

  Args:
    learning_rate: :math:`\eta` (a float or ``step -> rate``; evaluated at the
      call index, as a PyTorch scheduler stepped after each step).
    b1, b2: Adam's moment decays (the reference's ``betas``).
    shampoo_beta: decay of the Shampoo factors (None: ``b2``).
    eps: added to :math:`\sqrt{v}`.
    weight_decay: :math:`\lambda`, applied to the stepped weights.
    precondition_frequency: refresh the eigenbases every this many steps.
    max_precond_dim: axes longer than this get no preconditioner.
    merge_dims: merge adjacent axes up to ``max_precond_dim`` first.
    precondition_1d: precondition vectors too (one full factor).
    normalize_grads: divide each leaf's direction by its RMS.
    correct_bias: Adam's bias correction :math:`c_t`.
    weight_decay_mask: a bool pytree (or ``params -> pytree``) of the leaves
      weight decay acts on (None: all, as the reference).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params`` when
    ``weight_decay > 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = soap(0.1, weight_decay=0.0)
    >>> params = {'w': jnp.ones((3, 2))}
    >>> state = tx.init(params)
    >>> g = {'w': jnp.arange(6.0).reshape(3, 2)}
    >>> u, state = tx.update(g, state, params)   # first call: no step
    >>> float(jnp.abs(u['w']).max())
    0.0
    >>> u, state = tx.update(g, state, params)   # Adam in the eigenbasis

  References:
    Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam",
    arXiv:2409.11321 (2024).
  """
  check_learning_rate(learning_rate)
  check_nonnegative('weight_decay', weight_decay)
  return optax.chain(
      scale_by_soap(b1=b1, b2=b2, shampoo_beta=shampoo_beta, eps=eps,
                    precondition_frequency=precondition_frequency,
                    max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                    precondition_1d=precondition_1d,
                    normalize_grads=normalize_grads,
                    correct_bias=correct_bias),
      _scale_and_decay_after_step(learning_rate, weight_decay,
                                  weight_decay_mask))


def check_section(h: Any, prefix: str) -> None:
  """Raises ``ConfigError`` naming ``<prefix>.<field>`` for an invalid value
  of SOAP's config section (``optimizer.soap``)."""
  for field in ('b1', 'b2'):
    errors.number(f'{prefix}.{field}', h[field], at_least=0, below=1)
  errors.number(f'{prefix}.eps', h.eps, at_least=0)
  errors.number(f'{prefix}.shampoo_beta', h.shampoo_beta, at_least=0, below=1,
                optional=True)
  errors.integer(f'{prefix}.precondition_frequency', h.precondition_frequency,
                 1)
  errors.integer(f'{prefix}.max_precond_dim', h.max_precond_dim, 1)
  for field in ('merge_dims', 'precondition_1d', 'normalize_grads',
                'correct_bias'):
    errors.boolean(f'{prefix}.{field}', h[field])
