"""`analysis.lanczos.eigsh` entirely on the device: one compiled call.

The host driver (`analysis.lanczos.host`) runs the Lanczos steps in compiled
chunks and reads the tridiagonal back between them to decide whether to
stop, restart or check for missed copies of repeated eigenvalues. Here the
same decisions are traced: one ``lax.while_loop`` over checks, each of which
runs a chunk of steps (`core._extend`), solves the small Ritz problem with
``jnp.linalg.eigh``, tests the residual estimates against ``tol``, and
thick-restarts (`core._thick_restart`) or starts a deflation block
(`core._cut`; the next check's `core._refresh` gives its fresh direction)
under ``lax.cond``. The true residuals of the wanted pairs (one product
each) are measured in the same call. The host reads the results
once, at the end (`solve` returns them in one ``jax.device_get``), and
forms the Ritz vectors with a second, product-free compiled call that stays
on the device (`space.combine_columns`, which the host driver uses too).

Compilation: `solve_compiled` is jitted once per (operator function, vector
shapes, dtype, basis rows, layout); ``k``, ``tol``, the cap, ``min_iters``,
``which``, ``verify`` and the dimension are traced.

The Ritz problem of ``j`` active rows is padded to the smallest of a few
static sizes (`buckets`), its padding given eigenvalues above the active
ones (twice a Gershgorin bound), so the active Ritz pairs come first in
ascending order and a short run pays for a small ``eigh``. It is solved in
the vectors' dtype (the host driver solves it in float64): in float32 the
Ritz values carry float32's rounding, a few ``eps`` relative.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lanczos import core, space as space_lib

WHICH = {'LA': 0, 'SA': 1, 'LM': 2}

# The traced steps of `core` (their jitted wrappers serve the host driver).
# pylint: disable=protected-access
_extend, _refresh, _cut = core._extend, core._refresh, core._cut
_thick_restart, _residual_norms = core._thick_restart, core._residual_norms
# pylint: enable=protected-access


class Loop(NamedTuple):
  """The carry of the loop over checks (see `analysis.lanczos.host`)."""
  state: core.KrylovState
  done: jax.Array
  restarts: jax.Array
  block_start: jax.Array
  rounds: jax.Array
  verified: jax.Array
  complete: jax.Array
  chunk: jax.Array
  hist: jax.Array  # (2, 2): the last two (products, log worst ratio).
  hist_len: jax.Array
  checks: jax.Array
  theta: jax.Array  # Ascending Ritz values of the last check (active first).
  vecs: jax.Array  # Their coordinates, (rows, rows).
  rank: jax.Array  # 0 for the most wanted Ritz value.


def buckets(rows: int) -> tuple:
  """The static sizes the Ritz problem is padded to: 16, 32, 64, ... rows."""
  sizes, b = [], core.BLOCK
  while b < rows:
    sizes.append(b)
    b *= 2
  return tuple(sizes + [rows])


def ritz(s: core.KrylovState, restarted: jax.Array):
  """Ascending Ritz values ``(rows,)`` (the ``j`` active ones first) and
  their coordinates ``(rows, rows)`` (zero outside the active block)."""
  rows = s.alphas.shape[0]
  active = jnp.arange(rows) < s.j
  both = active[:, None] & active[None, :]
  off = s.betas[:-1]
  tri = jnp.diag(s.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
  t = jnp.where(both, jnp.where(restarted, 0.5 * (s.proj + s.proj.T), tri), 0)
  bound = jnp.max(jnp.sum(jnp.abs(t), axis=1))
  pad = jnp.where(bound > 0, 2 * bound, 1).astype(t.dtype)
  t = t + jnp.diag(jnp.where(active, 0, pad))
  sizes = buckets(rows)

  def solve(size):
    def branch(t):
      w, v = jnp.linalg.eigh(t[:size, :size], symmetrize_input=False)
      w = jnp.concatenate([w, jnp.full((rows - size,), pad, w.dtype)])
      return w, jnp.zeros((rows, rows), v.dtype).at[:size, :size].set(v)
    return branch

  index = jnp.sum(jnp.asarray(sizes[:-1]) < s.j)
  theta, vecs = jax.lax.switch(index, [solve(b) for b in sizes], t)
  return theta, jnp.where(both, vecs, 0)


def ranks(theta: jax.Array, j: jax.Array, which: jax.Array) -> jax.Array:
  """0 for the most wanted of the ``j`` active Ritz values, up; inactive
  ones after them."""
  rows = theta.shape[0]
  i = jnp.arange(rows)
  active = i < j
  key = jnp.where(active, -jnp.abs(theta), jnp.inf)[::-1]
  order = rows - 1 - jnp.argsort(key, stable=True)  # Ties: the later one.
  lm = jnp.zeros(rows, jnp.int32).at[order].set(i.astype(jnp.int32))
  rank = jnp.where(which == 0, j - 1 - i, jnp.where(which == 1, i, lm))
  return jnp.where(active, rank, rows + i).astype(jnp.int32)


def _check(c: Loop, op, *, k, n, cap, limit, tol, min_iters, which, verify,
           eps, param_dtypes, shardings) -> Loop:
  """One check of the host loop (`analysis.lanczos.host.run`), traced."""
  s = c.state
  rows = s.alphas.shape[0]
  dtype = s.alphas.dtype
  i = jnp.arange(rows)
  need = s.stalled & (s.j < n)
  s = jax.lax.cond(need, functools.partial(_refresh, shardings=shardings),
                   lambda x: x, s)
  block_start = jnp.where(need, s.j, c.block_start)
  stop = jnp.minimum(jnp.minimum(s.j + c.chunk, limit),
                     s.j + cap - s.num_matvecs)
  s = _extend(op, s, stop, param_dtypes=param_dtypes, shardings=shardings)
  j, total = s.j, s.num_matvecs
  active = i < j
  stalled = s.stalled & (j < n)
  bad = s.nonfinite_at >= 0
  theta, vecs = ritz(s, c.restarts > 0)
  beta = s.betas[jnp.maximum(j - 1, 0)]
  last = vecs[jnp.maximum(j - 1, 0)]
  cuts = jnp.where(active, s.cuts, 0)
  est = jnp.sqrt((beta * last) ** 2 + jnp.sum((cuts[:, None] * vecs) ** 2, 0))
  size = jnp.where(active, jnp.abs(theta), 0)
  floor = eps ** (2 / 3) * jnp.max(size)
  ratio = est / (tol * jnp.maximum(size, floor))
  ratio = jnp.where(active, jnp.nan_to_num(ratio, nan=jnp.inf), 0)
  rank = ranks(theta, j, which)
  wanted = rank < jnp.minimum(k, j)
  complete = (j >= n) & (c.restarts == 0)
  converged = complete | ((j >= k) & (tol > 0)
                          & jnp.all(jnp.where(wanted, ratio <= 1, True)))
  # The newest block (after a breakdown or a deflation check) must have
  # resolved its most wanted Ritz value, wanted (look again) or not.
  has_block = block_start > 0
  in_block = active & (jnp.sum(jnp.where((i >= block_start)[:, None],
                                         vecs ** 2, 0), 0) > 0.5)
  any_block = jnp.any(in_block)
  top = jnp.argmin(jnp.where(in_block, rank, 3 * rows))
  found_top = wanted[top]
  value = jnp.where(which == 2, jnp.abs(theta[top]), theta[top])
  edge = jnp.where(
      which == 0, jnp.min(jnp.where(wanted, theta, jnp.inf)),
      jnp.where(which == 1, jnp.max(jnp.where(wanted, theta, -jnp.inf)),
                jnp.min(jnp.where(wanted, jnp.abs(theta), jnp.inf))))
  resolved = (ratio[top] <= 1) | (~found_top & (
      est[top] <= 0.5 * jnp.abs(edge - value)))
  block_ok = ~has_block | (any_block & resolved)
  found = ~has_block | ~any_block | found_top
  # The decisions of the host loop, in its order.
  accept = converged & block_ok & (total >= min_iters) & ~complete
  missed_none = accept & has_block & ~found
  finish = accept & ~missed_none & (~verify | (c.rounds >= k) | (j >= n))
  deflating = accept & ~missed_none & ~finish & ~stalled
  capped = ~complete & ~accept & (total >= cap)
  restarting = ~complete & ~accept & ~capped & (j >= limit)
  done = bad | complete | missed_none | finish | capped
  go = ~done
  # A deflation block: the next check's `_refresh` gives its fresh start
  # (the program holds one copy of the random direction's code, not two).
  s = jax.lax.cond(go & deflating, _cut, lambda x: x, s)
  # A thick restart keeps the best Ritz vectors (and the newest block's
  # most wanted one, with its rows last).
  keep = jnp.minimum(j - 1, k + jnp.maximum(k, (j - k) // 2))
  kept = rank < keep
  swap = has_block & any_block & ~kept[top]
  kept = jnp.where(swap, (kept & (rank != keep - 1)) | (i == top), kept)
  last_rows = has_block & in_block
  order = jnp.argsort(jnp.where(kept, jnp.where(last_rows, rows, 0) + i,
                                3 * rows), stable=True)
  live = i < keep
  coeffs = jnp.where(live[None, :], vecs[:, order], 0)
  theta_keep = jnp.where(live, theta[order], 0)
  s = jax.lax.cond(go & restarting,
                   lambda x: _thick_restart(x, coeffs, theta_keep, keep,
                                            shardings=shardings),
                   lambda x: x, s)
  restart_start = jnp.where(
      has_block, jnp.sum(kept & ~last_rows, dtype=jnp.int32), 0)
  block_start = jnp.where(go & deflating, j, jnp.where(
      go & restarting, restart_start, block_start))
  # The next chunk: the residuals' recent rate, extrapolated to tol.
  worst = jnp.max(jnp.where(block_ok & ~wanted, 0, ratio))
  point = jnp.stack([total.astype(dtype),
                     jnp.log(jnp.maximum(worst, jnp.finfo(dtype).tiny))])
  hist = jnp.stack([c.hist[1], point])
  hist_len = jnp.minimum(c.hist_len + 1, 2)
  j_next = s.j
  slope = (hist[1, 1] - hist[0, 1]) / jnp.maximum(hist[1, 0] - hist[0, 0], 1)
  falling = (hist_len >= 2) & (slope < 0) & (hist[1, 1] > 0)
  guess = jnp.ceil(0.8 * hist[1, 1] / jnp.where(falling, -slope, 1))
  guess = jnp.clip(jnp.nan_to_num(guess, posinf=1e9), 1,
                   jnp.maximum(4, j_next))
  nxt = jnp.where(tol <= 0, jnp.maximum(4, j_next), jnp.where(
      falling, guess.astype(jnp.int32), jnp.maximum(2, j_next // 2)))
  nxt = jnp.maximum(jnp.maximum(nxt, min_iters - total), 1)
  updating = go & ~accept
  return Loop(
      state=s, done=done | (c.checks + 1 >= 4 * cap + 64),
      restarts=c.restarts + (go & restarting),
      block_start=block_start, rounds=c.rounds + (go & deflating),
      verified=c.verified | complete | missed_none, complete=complete,
      chunk=jnp.where(go & deflating, 4, jnp.where(updating, nxt, c.chunk)),
      hist=jnp.where(updating, hist, jnp.where(deflating, 0, c.hist)),
      hist_len=jnp.where(updating, hist_len,
                         jnp.where(deflating, 0, c.hist_len)),
      checks=c.checks + 1, theta=theta, vecs=vecs, rank=rank)


class Outcome(NamedTuple):
  """What `solve_compiled` returns (on the device until read)."""
  theta: jax.Array  # (rows,) the wanted Ritz values, descending, zero-padded.
  residuals: jax.Array  # (rows,) their true residuals.
  coeffs: jax.Array  # (rows, rows) their coordinates in the basis.
  count: jax.Array  # How many are wanted: min(k, j).
  total: jax.Array
  restarts: jax.Array
  breakdowns: jax.Array
  bad: jax.Array  # The product that was not finite, or -1.
  verified: jax.Array
  complete: jax.Array
  anorm: jax.Array
  theta_max: jax.Array  # max |theta| over every Ritz value of the last check.
  checks: jax.Array


def _solve(op, state, k, n, cap, limit, tol, min_iters, which, verify, chunk,
           *, param_dtypes, shardings):
  rows = state.alphas.shape[0]
  dtype = state.alphas.dtype
  eps = float(jnp.finfo(dtype).eps)
  i32 = lambda x: jnp.asarray(x, jnp.int32)
  tol = jnp.asarray(tol, dtype)
  check = functools.partial(
      _check, op=op, k=k, n=n, cap=cap, limit=limit, tol=tol,
      min_iters=min_iters, which=which, verify=verify, eps=eps,
      param_dtypes=param_dtypes, shardings=shardings)
  false = jnp.zeros((), bool)
  loop = Loop(state, false, i32(0), i32(0), i32(0), false, false, i32(chunk),
              jnp.zeros((2, 2), dtype), i32(0), i32(0),
              jnp.zeros(rows, dtype), jnp.zeros((rows, rows), dtype),
              jnp.zeros(rows, jnp.int32))
  loop = jax.lax.while_loop(lambda c: ~c.done, check, loop)
  s, i = loop.state, jnp.arange(rows)
  count = jnp.minimum(k, s.j)
  wanted = loop.rank < count
  order = jnp.argsort(jnp.where(wanted, -loop.theta, jnp.inf), stable=True)
  live = i < count
  coeffs = jnp.where(live[None, :], loop.vecs[:, order], 0)
  theta = jnp.where(live, loop.theta[order], 0)
  bad = s.nonfinite_at
  residuals = _residual_norms(
      op, s.basis, coeffs, theta, jnp.where(bad >= 0, 0, count),
      param_dtypes=param_dtypes, shardings=shardings)
  theta_max = jnp.max(jnp.where(i < s.j, jnp.abs(loop.theta), 0))
  return s, Outcome(theta, residuals, coeffs, count, s.num_matvecs,
                    loop.restarts, s.breakdowns, bad, loop.verified,
                    loop.complete, s.anorm, theta_max, loop.checks)


solve_compiled = jax.jit(_solve, static_argnames=('param_dtypes', 'shardings'),
                         donate_argnums=(1,))
solve_compiled.__doc__ = """The whole `eigsh` loop in one compiled call:
returns ``(the final KrylovState, Outcome)``. Donates the start state."""


def solve(space: space_lib.Space, state: core.KrylovState, *, k: int,
          cap: int, limit: int, tol: float, min_iters: int, which: str,
          verify: bool, chunk: int, vectors: bool) -> dict:
  """Runs `solve_compiled` and reads its results in one transfer.

  Returns:
    A dict of host values: ``theta`` (descending, float64), ``residuals``,
    ``total``, ``restarts``, ``breakdowns``, ``bad``, ``verified``,
    ``complete``, ``anorm``, ``theta_max``, ``checks``, and ``eigvecs``
    (pytrees on the device, or None).
  """
  i32 = np.int32
  final, out = solve_compiled(
      space.op, state, i32(k), i32(space.dim), i32(cap), i32(limit),
      np.asarray(tol, state.alphas.dtype), i32(min_iters), i32(WHICH[which]),
      np.bool_(verify), i32(chunk), **space_lib.solver_kwargs(space))
  host = jax.device_get(out._replace(coeffs=None))  # The one transfer.
  count = int(host.count)
  eigvecs = None
  if vectors and int(host.bad) < 0:
    eigvecs = space_lib.combine_columns(
        final.basis, out.coeffs, space.params_like if space.flat else None,
        count=count, flat=space.flat)
  return dict(theta=np.asarray(host.theta[:count], np.float64),
              residuals=np.asarray(host.residuals[:count], np.float64),
              total=int(host.total), restarts=int(host.restarts),
              breakdowns=int(host.breakdowns), bad=int(host.bad),
              verified=bool(host.verified), complete=bool(host.complete),
              anorm=float(host.anorm), theta_max=float(host.theta_max),
              checks=int(host.checks), eigvecs=eigvecs)
