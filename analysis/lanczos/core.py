"""Lanczos with full reorthogonalization on pytree operators: the compiled steps.

An operator is any symmetric linear map ``matvec(v) -> Av`` on pytrees shaped
like some ``params_like``. The Lanczos vectors are kept as a basis stacked on
a leading axis of every leaf (`analysis.lanczos.trees`), laid out like the
parameters, and the loop state lives in a `KrylovState` of fixed shapes.

Compilation: `extend` runs the steps ``j -> stop`` in one ``lax.while_loop``
whose bounds are traced, so it is compiled once per (operator function,
parameter shapes, basis rows, dtype) and reused for any number of iterations,
any ``k``, any tolerance and any new operator arrays (pass the operator as a
`jax.tree_util.Partial`, as `analysis.hessian.hvp_fn` returns it).

The steps here are plain traced functions with jitted wrappers: the default
driver, `analysis.lanczos.device`, calls them inside one compiled loop over
restart cycles (the convergence test, thick restarts and deflation checks
traced too); the host driver, `analysis.lanczos.host`, calls the jitted
wrappers chunk by chunk and decides between calls.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from analysis.lanczos import trees
from dynamics.types import PyTree

Matvec = Callable[[PyTree], PyTree]

# Rows of the basis are reorthogonalized against in blocks of this many, and
# only the blocks filled so far: an iteration costs O(j n), not O(m n).
BLOCK = 16

# A coupling beta <= BREAKDOWN * eps * ||A|| after full reorthogonalization
# is rounding: the Krylov space is invariant (a "breakdown").
BREAKDOWN = 100


class KrylovState(NamedTuple):
  """The state of a Lanczos run after ``j`` steps (fixed shapes).

  Attributes:
    basis: ``rows`` orthonormal vectors stacked on each leaf's leading axis
      (rows ``>= j`` are zero).
    v: the next Lanczos vector (unit norm, orthogonal to the basis).
    proj: ``(rows, rows)`` projection ``V A V^T`` of the operator on the
      basis (tridiagonal until a thick restart).
    alphas: ``(rows,)`` its diagonal.
    betas: ``(rows,)`` ``betas[i]``, the norm of the residual after step
      ``i``: the coupling of row ``i + 1`` (0 where the Krylov space was
      invariant and the run continued from a fresh random vector).
    j: steps taken into this basis.
    anorm: a running lower bound on ``||A||``.
    seed: 32-bit seed of the run's pseudo-random vectors.
    mask: 0/1 pytree like a vector: the subspace the run lives in (a block
      of parameters; all ones for the whole space).
    nonfinite_at: the step whose product was NaN/Inf, or -1.
    stalled: the Krylov space became invariant at the last step: `refresh`
      must give a fresh direction before the run can go on.
    breakdowns: how many times that happened.
    num_matvecs: operator applications so far (across thick restarts).
    cuts: ``(rows,)`` the couplings dropped after row ``i`` (at a breakdown
      or a deflation, where ``betas[i]`` was set to 0): they bound the
      residuals of the Ritz pairs with weight on row ``i``.
  """
  basis: PyTree
  v: PyTree
  proj: jax.Array
  alphas: jax.Array
  betas: jax.Array
  j: jax.Array
  anorm: jax.Array
  seed: jax.Array
  mask: PyTree
  nonfinite_at: jax.Array
  stalled: jax.Array
  breakdowns: jax.Array
  num_matvecs: jax.Array
  cuts: jax.Array


def as_operator(matvec: Matvec) -> Partial:
  """Wraps ``matvec`` as a `Partial` so that it can cross a `jax.jit` boundary."""
  return matvec if isinstance(matvec, Partial) else Partial(matvec)


def basis_rows(capacity: int, dim: int) -> int:
  """Rows allocated for a basis of ``capacity`` vectors in dimension ``dim``:
  ``min(capacity, dim)`` rounded up to a multiple of `BLOCK`."""
  m = max(1, min(int(capacity), int(dim)))
  return -(-m // BLOCK) * BLOCK


def orthogonalize(basis: PyTree, w: PyTree, active: jax.Array, rows: int):
  """Gram-Schmidt against the first ``active`` rows, twice ("twice is
  enough"), block by block (blocks beyond ``active`` are skipped); returns
  ``(coefficients (rows,), w orthogonalized)``."""
  dtype = jax.tree.leaves(w)[0].dtype
  num_blocks = (active + BLOCK - 1) // BLOCK

  def body(i, carry):
    h, w = carry
    start = (i % num_blocks) * BLOCK
    block = jax.tree.map(
        lambda s: jax.lax.dynamic_slice_in_dim(s, start, BLOCK, axis=0), basis)
    hb = trees.rows_dot(block, w)
    w = jax.tree.map(lambda s, x: x - jnp.tensordot(hb, s, axes=1), block, w)
    h = jax.lax.dynamic_update_slice(
        h, jax.lax.dynamic_slice(h, (start,), (BLOCK,)) + hb, (start,))
    return h, w

  return jax.lax.fori_loop(0, 2 * num_blocks, body,
                           (jnp.zeros(rows, dtype), w))


def _fresh(seed, basis, mask, active, rows, dtype):
  """A random unit vector of the ``mask`` subspace orthogonal to the first
  ``active`` rows (zero if there is none)."""
  r = jax.tree.map(jnp.multiply, trees.hashed_signs(seed, mask, dtype), mask)
  _, r = orthogonalize(basis, r, active, rows)
  nrm = trees.norm(r)
  return trees.scale(jnp.where(nrm > 0, 1 / jnp.where(nrm > 0, nrm, 1), 0), r)


def _start(like: PyTree, key: jax.Array, v0: PyTree, use_v0: jax.Array,
           mask: PyTree, use_mask: jax.Array, salt: jax.Array = 0, *,
           rows: int, dtype: str, shardings=None) -> KrylovState:
  """The state before the first step: ``v0`` (if ``use_v0``) or a random
  sign vector, restricted to ``mask`` (if ``use_mask``) and normalized; an
  empty basis of ``rows`` rows."""
  dtype = np.dtype(dtype)
  mask = jax.tree.map(lambda m: jnp.where(use_mask, m.astype(dtype), 1),
                      mask)
  seed = trees.key_seed(key, salt)
  signs = trees.hashed_signs(seed, like, dtype)
  v = jax.tree.map(lambda a, b, m: m * jnp.where(use_v0, a.astype(dtype), b),
                   v0, signs, mask)
  v = trees.constrain(trees.scale(1 / trees.norm(v), v), shardings, False)
  zero = jnp.zeros((), dtype)
  basis = trees.constrain(trees.zeros_stack(rows, like, dtype), shardings, True)
  i32 = lambda x: jnp.asarray(x, jnp.int32)
  return KrylovState(basis, v, jnp.zeros((rows, rows), dtype),
                     jnp.zeros(rows, dtype), jnp.zeros(rows, dtype), i32(0),
                     zero, seed, mask, i32(-1), jnp.zeros((), bool), i32(0),
                     i32(0), jnp.zeros(rows, dtype))


_start_jit = jax.jit(_start, static_argnames=('rows', 'dtype', 'shardings'))

# Below this many basis entries a flat start state is built on the host and
# placed on the device as is: nothing to compile for it.
HOST_LIMIT = 2 ** 24


def start(like: PyTree, key: jax.Array, v0: PyTree, use_v0: Any,
          mask: PyTree, use_mask: Any, salt: int = 0, *, rows: int,
          dtype: str, shardings=None) -> KrylovState:
  """The state before the first step: ``v0`` (if ``use_v0``) or a random
  sign vector, restricted to ``mask`` (if ``use_mask``) and normalized; an
  empty basis of ``rows`` rows (compiled, or built on the host when small)."""
  if not (isinstance(like, np.ndarray) and like.ndim == 1
          and rows * like.size <= HOST_LIMIT and shardings is None):
    return _start_jit(like, key, v0, use_v0, mask, use_mask, salt, rows=rows,
                      dtype=dtype, shardings=shardings)
  dtype = np.dtype(dtype)
  n = like.size
  seed = trees.host_key_seed(key, int(salt))
  v = (np.asarray(v0, dtype) if bool(use_v0)
       else trees.host_signs(seed, n, dtype))
  m = np.asarray(mask, dtype) if bool(use_mask) else np.ones(n, dtype)
  v = v * m
  v = v / np.linalg.norm(v)
  i32 = lambda x: np.asarray(x, np.int32)
  state = KrylovState(
      None, v, np.zeros((rows, rows), dtype), np.zeros(rows, dtype),
      np.zeros(rows, dtype), i32(0), np.zeros((), dtype),
      np.asarray(seed, np.uint32), m, i32(-1), np.zeros((), bool), i32(0),
      i32(0), np.zeros(rows, dtype))
  state = jax.device_put(state)  # One transfer; the basis made on device.
  return state._replace(basis=_zeros(rows, n, dtype.name))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(rows: int, n: int, dtype: str) -> jax.Array:
  return jnp.zeros((rows, n), dtype)


@functools.partial(jax.jit, static_argnames=('rows', 'dtype'))
def start_batch(like: PyTree, key: jax.Array, salts: jax.Array, mask: PyTree,
                use_mask: jax.Array, *, rows: int, dtype: str) -> KrylovState:
  """`start` for a batch of random start vectors (one per salt)."""
  return jax.vmap(lambda salt: _start(like, key, like, False, mask, use_mask,
                                      salt, rows=rows, dtype=dtype))(salts)


def _product(op, x: PyTree, dtype, *, param_dtypes, shardings) -> PyTree:
  """``op(x)``, ``x`` cast to the dtypes the operator takes and the product
  to the vectors' ``dtype`` (laid out like a vector)."""
  leaves, treedef = jax.tree.flatten(x)
  arg = jax.tree.unflatten(treedef, [v.astype(d) for v, d in
                                     zip(leaves, param_dtypes)])
  return trees.constrain(trees.cast(op(arg), dtype), shardings, False)


def _step(op, s: KrylovState, *, param_dtypes, shardings) -> KrylovState:
  rows = s.alphas.shape[0]
  dtype = s.alphas.dtype
  eps = jnp.finfo(dtype).eps
  j = s.j
  basis = jax.tree.map(lambda b, x: b.at[j].set(x), s.basis, s.v)
  basis = trees.constrain(basis, shardings, True)
  w = _product(op, s.v, dtype, param_dtypes=param_dtypes, shardings=shardings)
  finite = trees.all_finite(w)
  h, w = orthogonalize(basis, w, j + 1, rows)
  beta = trees.norm(w)
  alpha = h[j]
  prev = jnp.where(j > 0, s.betas[jnp.maximum(j - 1, 0)], 0)
  anorm = jnp.maximum(s.anorm, jnp.abs(alpha) + beta + prev)
  # An invariant Krylov space: beta at the rounding level of the
  # reorthogonalized residual (a few eps ||A||). Real couplings can be far
  # smaller than sqrt(eps) ||A|| (low-rank matrices, small eigenvalues in
  # float32), so only ``BREAKDOWN eps ||A||`` counts: the run then stalls
  # until `refresh` gives it a fresh direction orthogonal to the basis. The
  # dropped coupling is kept in ``cuts`` (it bounds the residuals).
  stalled = (beta <= BREAKDOWN * eps * anorm) & finite
  v = trees.scale(1 / jnp.where(beta > 0, beta, 1), w)
  v = trees.constrain(v, shardings, False)
  cuts = s.cuts.at[j].set(jnp.where(stalled, beta, 0))
  beta = jnp.where(stalled, jnp.zeros_like(beta), beta)
  proj = s.proj.at[:, j].set(h).at[j, :].set(h)
  return s._replace(
      basis=basis, v=v, proj=proj, alphas=s.alphas.at[j].set(alpha),
      betas=s.betas.at[j].set(beta), j=j + 1, anorm=anorm,
      nonfinite_at=jnp.where(finite, s.nonfinite_at, s.num_matvecs),
      stalled=stalled, num_matvecs=s.num_matvecs + 1, cuts=cuts)


def _extend(op, state, stop, *, param_dtypes, shardings):
  rows = state.alphas.shape[0]

  def cond(s):
    return ((s.j < jnp.minimum(stop, rows)) & (s.nonfinite_at < 0)
            & ~s.stalled)

  step = functools.partial(_step, op, param_dtypes=param_dtypes,
                           shardings=shardings)
  return jax.lax.while_loop(cond, step, state)


extend = jax.jit(_extend, static_argnames=('param_dtypes', 'shardings'),
                 donate_argnums=(1,))
extend.__doc__ = """Lanczos steps until ``state.j == stop`` (traced), the basis
is full, a product is not finite or the run stalls. Donates ``state``."""


def _extend_batch(op, states, stop, *, param_dtypes, shardings):
  run = functools.partial(_extend, param_dtypes=param_dtypes,
                          shardings=shardings)
  return jax.vmap(run, in_axes=(None, 0, None))(op, states, stop)


# The same steps for a batch of independent runs (stochastic Lanczos
# quadrature): one compiled loop, the operator applied to all of them at once.
extend_batch = jax.jit(_extend_batch,
                       static_argnames=('param_dtypes', 'shardings'),
                       donate_argnums=(1,))


def _refresh(s: KrylovState, *, shardings=None) -> KrylovState:
  rows = s.alphas.shape[0]
  seed = trees.mix(s.seed + s.num_matvecs.astype(jnp.uint32))
  fresh = _fresh(seed, s.basis, s.mask, s.j, rows, s.alphas.dtype)
  v = jax.tree.map(lambda a, b: jnp.where(s.stalled, a, b), fresh, s.v)
  return s._replace(v=trees.constrain(v, shardings, False),
                    stalled=jnp.zeros_like(s.stalled),
                    breakdowns=s.breakdowns + s.stalled)


refresh = jax.jit(_refresh, static_argnames=('shardings',), donate_argnums=(0,))
refresh.__doc__ = """After a stall, continue from a fresh random direction
orthogonal to the basis (of the ``mask`` subspace; zero if there is none)."""
refresh_batch = jax.jit(jax.vmap(_refresh), donate_argnums=(0,))


def _cut(s: KrylovState) -> KrylovState:
  """The first half of `_deflate`: drops the coupling of the last row (into
  ``cuts``) and marks the run stalled, not counted as a breakdown; the
  next `_refresh` gives the fresh direction."""
  last = jnp.maximum(s.j - 1, 0)
  return s._replace(cuts=s.cuts.at[last].add(s.betas[last]),
                    betas=s.betas.at[last].set(0),
                    stalled=jnp.ones_like(s.stalled),
                    breakdowns=s.breakdowns - 1)


def _deflate(s: KrylovState, *, shardings=None) -> KrylovState:
  """Drops the coupling of the last row (into ``cuts``) and continues from a
  fresh random direction orthogonal to the basis: a new Lanczos block on
  the operator compressed to the basis' complement."""
  return _refresh(_cut(s), shardings=shardings)


deflate = jax.jit(_deflate, static_argnames=('shardings',), donate_argnums=(0,))


def _residual_norms(op, basis, coeffs, theta, count, *, param_dtypes,
                    shardings):
  dtype = theta.dtype

  def body(i, out):
    y = trees.constrain(trees.combine(coeffs[:, i], basis), shardings, False)
    ay = _product(op, y, dtype, param_dtypes=param_dtypes,
                  shardings=shardings)
    r = jax.tree.map(lambda a, b: a - theta[i] * b, ay, y)
    return out.at[i].set(trees.norm(r))

  return jax.lax.fori_loop(0, count, body, jnp.zeros(theta.shape, dtype))


residual_norms = jax.jit(_residual_norms,
                         static_argnames=('param_dtypes', 'shardings'))
residual_norms.__doc__ = """True residuals ``||A y_i - theta_i y_i||`` of the
first ``count`` (traced) Ritz vectors ``y_i = V^T coeffs[:, i]``, one product
each, for ``coeffs`` ``(rows, rows)`` and ``theta`` ``(rows,)`` zero-padded in
the basis' dtype: compiled once per basis, whatever ``k``."""


def _thick_restart(state: KrylovState, coeffs: jax.Array, theta: jax.Array,
                   keep: jax.Array, *, shardings=None) -> KrylovState:
  """Keeps ``keep`` Ritz vectors ``V^T coeffs[:, i]`` as the new basis.

  ``coeffs`` is ``(rows, rows)`` with the kept Ritz vectors' coordinates in
  its first ``keep`` columns (zero elsewhere), ``theta`` their Ritz values
  (zero-padded). The next Lanczos vector is the current residual direction
  ``state.v``; the next step measures its couplings to the kept vectors
  (Wu & Simon's thick restart).
  """
  basis = trees.constrain(trees.combine(coeffs.T, state.basis), shardings,
                          True)
  rows = state.alphas.shape[0]
  live = jnp.arange(rows) < keep
  theta = jnp.where(live, theta, 0).astype(state.alphas.dtype)
  return state._replace(basis=basis, proj=jnp.diag(theta), alphas=theta,
                        betas=jnp.zeros_like(state.betas),
                        cuts=jnp.zeros_like(state.cuts),
                        j=jnp.asarray(keep, jnp.int32))


thick_restart = jax.jit(_thick_restart, donate_argnums=(0,),
                        static_argnames=('shardings',))
thick_restart.__doc__ = _thick_restart.__doc__


def tridiagonal_eigh(alphas: Any, betas: Any) -> tuple[np.ndarray, np.ndarray]:
  """Eigenpairs of ``tridiag(betas, alphas, betas)``, eigenvalues descending.

  Returns:
    ``(theta (m,), s (m, m))`` in float64 with ``T s[:, i] = theta[i] s[:, i]``.

  Example:
    >>> theta, s = tridiagonal_eigh([2., 2.], [1.])
    >>> theta
    array([3., 1.])
  """
  alphas = np.asarray(alphas, np.float64)
  betas = np.asarray(betas, np.float64)
  if alphas.size == 1:
    return alphas.copy(), np.ones((1, 1))
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  theta, s = scipy.linalg.eigh_tridiagonal(alphas, betas)
  return theta[::-1], s[:, ::-1]


def ritz_vectors(basis: jax.Array, s: np.ndarray) -> jax.Array:
  """Ritz vectors ``Q_m^T s`` as rows ``(k, n)`` from a ``(m, k)`` block of s,
  for a flat ``(m, n)`` basis (see `lanczos`)."""
  return jnp.asarray(s.T, basis.dtype) @ basis
