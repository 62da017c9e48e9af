"""`analysis.lanczos.eigsh` driven from the host: compiled chunks of steps,
decisions between them.

Each check reads the tridiagonal (or, after thick restarts, the projection)
back to the host, solves the Ritz problem in float64 (SciPy) and decides
whether to stop, thick-restart or start a deflation block, then launches the
next compiled chunk: one round trip per check. It is the reference for the
on-device driver (`analysis.lanczos.device`, the default), which traces the
same decisions, and it is the driver that can show a progress bar.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from analysis.lanczos import core, ritz as ritz_lib, space as space_lib


def run(space: space_lib.Space, state: core.KrylovState, *, k: int, cap: int,
        limit: int, tol: float, min_iters: int, which: str, verify: bool,
        chunk: int, vectors: bool, bar) -> dict:
  """Runs the checks; returns the dict `analysis.lanczos.device.solve`
  returns (``bar`` is updated with the products spent)."""
  n = space.dim
  rows = state.alphas.shape[0]
  dtype = np.dtype(state.alphas.dtype)
  eps = float(np.finfo(dtype).eps)
  static = space_lib.solver_kwargs(space)
  restarts, done_total, history, j, checks = 0, 0, [], 0, 0
  # The rows of the newest Lanczos block (after a breakdown or a deflation
  # check it starts from a fresh vector orthogonal to the basis), the
  # deflation checks done, and whether the last one found nothing new.
  block_start, rounds, verified = 0, 0, False
  stalled = False
  while True:
    checks += 1
    if stalled:  # An invariant Krylov space: a new block, fresh direction.
      state = core.refresh(state, shardings=space.shardings)
      block_start = j
    stop = min(j + chunk, limit, j + cap - done_total)
    state = core.extend(space.op, state, np.int32(stop), **static)
    # One transfer per check.
    (j, total, bad, stalled, breakdowns, alphas, betas, cuts, proj,
     anorm) = jax.device_get(
         (state.j, state.num_matvecs, state.nonfinite_at, state.stalled,
          state.breakdowns, state.alphas, state.betas, state.cuts,
          state.proj if restarts else None, state.anorm))
    j, total, bad, breakdowns = int(j), int(total), int(bad), int(breakdowns)
    stalled = bool(stalled) and j < n
    bar.update(total - done_total)
    done_total = total
    if bad >= 0:
      return dict(bad=bad)
    theta, s, beta = ritz_lib.ritz(alphas, betas, proj, j)
    estimates = ritz_lib.estimates(s, beta, cuts, j)
    floor = eps ** (2 / 3) * np.abs(theta).max()
    with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
      ratio_all = estimates / (tol * np.maximum(np.abs(theta), floor))
    ratio_all = np.nan_to_num(ratio_all, nan=np.inf)
    idx = ritz_lib.wanted(theta, min(k, j), which)
    ratio = ratio_all[idx]
    complete = j >= n and restarts == 0
    converged = complete or (j >= k and tol > 0 and bool(np.all(ratio <= 1)))
    # The newest block (if any) must have converged its extreme Ritz value:
    # what it found is then either wanted (a copy or a value the first
    # space missed: check again) or not (nothing was missed).
    block_ok, found = True, True
    if block_start > 0:
      in_block = np.sum(s[block_start:j] ** 2, axis=0) > 0.5
      if not in_block.any():
        block_ok = False
      else:
        members = np.flatnonzero(in_block)
        top = members[ritz_lib.wanted(theta[members], 1, which)[0]]
        found = bool(top in idx)
        # Not wanted: resolved once it is nearer its eigenvalue than to the
        # least wanted one (the Ritz values of a random block rise from
        # below: a far one with a small residual is no missed copy).
        edge = theta[idx].min() if which == 'LA' else (
            theta[idx].max() if which == 'SA' else np.abs(theta[idx]).min())
        value = np.abs(theta[top]) if which == 'LM' else theta[top]
        block_ok = bool(ratio_all[top] <= 1) or (
            not found and estimates[top] <= 0.5 * abs(edge - value))
    if complete:
      verified = True
      break
    if converged and block_ok and total >= min_iters:
      if block_start > 0 and not found:
        verified = True
        break
      if not verify or rounds >= k or j >= n:
        break
      if stalled:  # The deflation check is a fresh block anyway.
        continue
      state = core.deflate(state, shardings=space.shardings)
      block_start, rounds, history = j, rounds + 1, []
      chunk = 4
      continue
    if total >= cap:
      break
    if j >= limit:  # The basis is full: keep the best Ritz vectors.
      keep = min(j - 1, k + max(k, (j - k) // 2))
      order = ritz_lib.wanted(theta, keep, which)
      if block_start > 0:  # Keep the newest block's extreme, and its rows last.
        if in_block.any() and top not in order:  # (``top``: as checked.)
          order = np.append(order[1:] if which == 'LA' else order[:-1], top)
        order = np.concatenate([order[~in_block[order]],
                                order[in_block[order]]])
        block_start = int(np.sum(~in_block[order]))
      keep = len(order)
      coeffs = np.zeros((rows, rows))
      coeffs[:j, :keep] = s[:, order]
      theta_keep = np.zeros(rows)
      theta_keep[:keep] = theta[order]
      state = core.thick_restart(state, coeffs, theta_keep, np.int32(keep),
                                 shardings=space.shardings)
      restarts, j = restarts + 1, keep
    worst = float(np.max(ratio_all[idx] if block_ok else ratio_all))
    history.append((total, math.log(max(worst, 1e-300))))
    chunk = max(ritz_lib.next_chunk(history, j, tol), min_iters - total, 1)
  order = idx[np.argsort(-theta[idx], kind='stable')]
  # The true residuals, one product per Ritz pair (the Lanczos estimates
  # are exact in exact arithmetic only).
  coeffs = np.zeros((rows, rows))
  coeffs[:j, :len(order)] = s[:, order]
  padded = np.zeros(rows)
  padded[:len(order)] = theta[order]
  residuals = np.asarray(core.residual_norms(
      space.op, state.basis, jnp.asarray(coeffs, dtype),
      jnp.asarray(padded, dtype), np.int32(len(order)), **static),
                         np.float64)[:len(order)]
  eigvecs = None
  if vectors:
    eigvecs = space_lib.combinations(space, state.basis,
                                     s[:, order].astype(dtype))
  return dict(theta=theta[order], residuals=residuals, total=total,
              restarts=restarts, breakdowns=breakdowns, bad=-1,
              verified=verified, complete=complete, anorm=float(anorm),
              theta_max=float(np.abs(theta).max()), checks=checks,
              eigvecs=eigvecs)
