"""Cross-entropy of a linear readout, computed over the vocabulary in chunks.

For hidden states ``h`` (``N x d``), a readout ``W`` (``d x V``), bias ``b``
and a scalar ``scale``, the logits are ``x = scale * (h W + b)`` and the
cross-entropy of class ``y`` is ``log Z - phi(x_y)`` with
``log Z = log sum_j exp(phi(x_j))`` (``phi`` the identity for the softmax,
``log s`` for StableMax; see `dynamics.losses`). The plain loss builds the
``N x V`` float32 logits, and its gradient another ``N x V`` array: at
GPT-2's ``V = 50,304`` and ``N = 16 x 1,024`` tokens that is 3.3 GB each.

`chunked_log_normalizer` computes ``log Z`` by a scan over vocabulary chunks
of ``C`` columns with a running (max, sum) -- the online logsumexp -- and its
custom backward pass recomputes each chunk's logits, so neither pass holds
more than ``N x C`` logits:

.. math::
    \\partial \\log Z / \\partial \\theta
      = \\sum_{chunks} J_c^T \\, \\exp(\\phi(x_c) - \\log Z)

where ``J_c`` is the Jacobian of ``phi(x_c)`` in ``(h, W_c, b_c)`` (for the
softmax, ``exp(x_c - log Z)`` is the softmax of the chunk's columns). The
label term ``phi(x_y)`` needs only the ``N`` label columns of ``W`` and is
differentiated by JAX as usual. The result equals the plain loss to the
round-off of the summation order.

References:
  Rabe and Staats, "Self-attention Does Not Need O(n^2) Memory", 2021
  (https://arxiv.org/abs/2112.05682): the chunked, rescaled logsumexp.
  Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models",
  2024 (https://arxiv.org/abs/2411.09009): the cross-entropy without the
  logits.
"""

import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

# ``phi``: the log of the unnormalized probability as a function of a logit
# (float32 in, float32 out; `dynamics.losses.PHIS` by ``model.softmax``).
Phi = Callable[[jax.Array], jax.Array]


def identity(x: jax.Array) -> jax.Array:
  """The softmax's ``phi``."""
  return x


def _chunks(w_dV: jax.Array, b_V: jax.Array, chunk: int
            ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """``W`` and ``b`` as ``(K, d, C)`` and ``(K, C)`` chunks (zero-padded to
  ``K C >= V`` columns) and the ``(K, C)`` mask of real columns."""
  d, v = w_dV.shape
  k = -(-v // chunk)
  pad = k * chunk - v
  w = jnp.pad(w_dV, ((0, 0), (0, pad))).reshape(d, k, chunk).transpose(1, 0, 2)
  b = jnp.pad(b_V, (0, pad)).reshape(k, chunk)
  valid = (jnp.arange(k * chunk) < v).reshape(k, chunk)
  return w, b, valid


def _chunk_phi(h_Nd, w_dC, b_C, scale, phi):
  """``phi(scale * (h W_c + b_c))`` in float32: one chunk's ``N x C``."""
  x = jnp.dot(h_Nd, w_dC.astype(h_Nd.dtype),
              preferred_element_type=jnp.float32)
  x = (x + b_C.astype(jnp.float32)[None, :]) * scale
  return phi(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _log_z(h_Nd, w_dV, b_V, scale, chunk, phi):
  return _log_z_fwd(h_Nd, w_dV, b_V, scale, chunk, phi)[0]


def _log_z_fwd(h_Nd, w_dV, b_V, scale, chunk, phi):
  w, b, valid = _chunks(w_dV, b_V, chunk)
  n = h_Nd.shape[0]

  def body(carry, xs):
    run_max, run_sum, best, best_idx = carry
    w_dC, b_C, valid_C, start = xs
    y = jnp.where(valid_C, _chunk_phi(h_Nd, w_dC, b_C, scale, phi), -jnp.inf)
    new_max = jnp.maximum(run_max, jnp.max(y, axis=-1))
    run_sum = (run_sum * jnp.exp(run_max - new_max)
               + jnp.sum(jnp.exp(y - new_max[:, None]), axis=-1))
    # The first index of the largest value, as jnp.argmax (phi is increasing).
    chunk_best = jnp.max(y, axis=-1)
    better = chunk_best > best
    best_idx = jnp.where(better, start + jnp.argmax(y, axis=-1), best_idx)
    return (new_max, run_sum, jnp.maximum(best, chunk_best), best_idx), None

  init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)),
          jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32))
  starts = jnp.arange(w.shape[0], dtype=jnp.int32) * chunk
  (run_max, run_sum, _, best_idx), _ = jax.lax.scan(
      body, init, (w, b, valid, starts))
  log_z = run_max + jnp.log(run_sum)
  return (log_z, best_idx), (h_Nd, w_dV, b_V, log_z)


def _log_z_bwd(scale, chunk, phi, residuals, cotangents):
  h_Nd, w_dV, b_V, log_z = residuals
  g_N = cotangents[0]
  w, b, valid = _chunks(w_dV, b_V, chunk)

  def body(dh, xs):
    w_dC, b_C, valid_C = xs
    y, vjp = jax.vjp(lambda h_, w_, b_: _chunk_phi(h_, w_, b_, scale, phi),
                     h_Nd, w_dC, b_C)
    p = jnp.where(valid_C, jnp.exp(y - log_z[:, None]), 0.0)
    dh_c, dw_c, db_c = vjp(g_N[:, None] * p)
    return dh + dh_c.astype(jnp.float32), (dw_c, db_c)

  dh, (dw, db) = jax.lax.scan(body, jnp.zeros(h_Nd.shape, jnp.float32),
                              (w, b, valid))
  d, v = w_dV.shape
  dw = dw.transpose(1, 0, 2).reshape(d, -1)[:, :v]
  db = db.reshape(-1)[:v]
  return dh.astype(h_Nd.dtype), dw.astype(w_dV.dtype), db.astype(b_V.dtype)


_log_z.defvjp(_log_z_fwd, _log_z_bwd)


def chunked_log_normalizer(h_Nd: jax.Array, w_dV: jax.Array,
                           b_V: Optional[jax.Array], *, scale: float = 1.0,
                           chunk: int, phi: Phi = identity
                           ) -> Tuple[jax.Array, jax.Array]:
  """``(log Z, argmax)`` per row of ``x = scale * (h W + b)``, by chunks.

  Args:
    h_Nd: ``(N, d)`` hidden states (any float dtype; the chunk's matmul
      accumulates in float32).
    w_dV: ``(d, V)`` readout.
    b_V: ``(V,)`` bias, or None.
    scale: multiplier of the logits.
    chunk: columns per chunk ``C`` (``V`` need not be a multiple).
    phi: the log of the unnormalized probability (increasing): the identity
      for the softmax, ``log s`` for StableMax (`dynamics.losses.PHIS`).

  Returns:
    ``log Z`` (``(N,)`` float32, differentiable in ``h``, ``W``, ``b``
    without ever forming ``N x V``) and the ``(N,)`` int32 index of the
    largest logit (first on ties, as ``jnp.argmax``; not differentiable).

  Example:
    >>> h, w = jnp.ones((3, 2)), jnp.arange(10.).reshape(2, 5)
    >>> log_z, top = chunked_log_normalizer(h, w, None, chunk=2)
    >>> bool(jnp.allclose(log_z, jax.nn.logsumexp(h @ w, -1))), top.tolist()
    (True, [4, 4, 4])
  """
  if b_V is None:
    b_V = jnp.zeros((w_dV.shape[1],), w_dV.dtype)
  return _log_z(h_Nd, w_dV, b_V, float(scale), balanced_chunk(
      w_dV.shape[1], chunk), phi)


def balanced_chunk(vocab: int, chunk: int) -> int:
  """The chunk width actually used: as many chunks as ``chunk`` columns
  need, made equal (rounded up to a multiple of 128 when that stays within
  ``chunk``), so the zero padding of the last chunk is small.

  Example:
    >>> balanced_chunk(50_304, 8192), balanced_chunk(32_000, 8192)
    (7296, 8064)
    >>> balanced_chunk(37, 8)
    8
  """
  k = -(-vocab // chunk)
  width = -(-vocab // k)
  aligned = -(-width // 128) * 128
  return aligned if aligned <= chunk else width


def chunked_cross_entropy(h_Nd: jax.Array, w_dV: jax.Array,
                          b_V: Optional[jax.Array], targets_N: jax.Array, *,
                          scale: float = 1.0, chunk: int,
                          phi: Phi = identity
                          ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Per-row cross-entropy ``log Z - phi(x_y)``, ``log Z`` and the argmax.

  The label term gathers the ``N`` label columns ``W[:, y]`` (``N x d``);
  everything ``N x V`` stays inside `chunked_log_normalizer`.

  Returns:
    ``(loss_N, log_z_N, argmax_N)``.
  """
  log_z, top = chunked_log_normalizer(h_Nd, w_dV, b_V, scale=scale,
                                      chunk=chunk, phi=phi)
  w_Nd = jnp.take(w_dV, targets_N, axis=1).T.astype(h_Nd.dtype)
  x_y = jnp.einsum('nd,nd->n', h_Nd, w_Nd,
                   preferred_element_type=jnp.float32)
  if b_V is not None:
    x_y = x_y + jnp.take(b_V, targets_N).astype(jnp.float32)
  label = phi(x_y * scale)
  return log_z - label, log_z, top



def chunked_softmax_ggn(h_Nd: jax.Array, w_dV: jax.Array,
                        b_V: Optional[jax.Array], dh_Nd: jax.Array,
                        dw_dV: jax.Array, db_V: Optional[jax.Array],
                        weights_N: jax.Array, *, scale: float = 1.0,
                        chunk: int
                        ) -> Tuple[jax.Array, jax.Array, Optional[jax.Array]]:
  r"""The softmax cross-entropy's Gauss-Newton product through a linear
  readout, by vocabulary chunks: never more than ``N x C`` logits.

  With logits :math:`x = s\,(hW + b)`, the softmax :math:`p` of each row and
  the Jacobian :math:`J` of :math:`x` in :math:`(h, W, b)`, it returns

  .. math::
      J^\top\, \mathrm{diag}(w)\, H\, J\, (\dot h, \dot W, \dot b), \qquad
      H_n = \mathrm{diag}(p_n) - p_n p_n^\top

  (:math:`H_n` the Hessian of :math:`\log Z - x_y` in row :math:`n`'s
  logits, the same for every label). Three scans over the chunks: ``log Z``
  (`chunked_log_normalizer`), :math:`p_n^\top \dot x_n`, then each chunk's
  :math:`u_c = w \odot (p_c \odot \dot x_c - p_c\, p^\top \dot x)` pulled
  back through the readout. Computed in float32.

  Args:
    h_Nd, w_dV, b_V: hidden states, readout, bias (or None).
    dh_Nd, dw_dV, db_V: the tangent of each (``db_V`` None with ``b_V``).
    weights_N: weight of each row in the loss (``1/N`` for a mean).
    scale: multiplier of the logits.
    chunk: columns per chunk (`balanced_chunk`).

  Returns:
    ``(g_h, g_W, g_b)``: the product, shaped like ``(h, W, b)`` (float32;
    ``g_b`` None without a bias).

  Example:
    >>> h, w, t = jnp.ones((2, 3)), jnp.ones((3, 5)), jnp.zeros((3, 5))
    >>> g = chunked_softmax_ggn(h, w, None, h, t, None, jnp.ones(2), chunk=2)
    >>> bool(jnp.abs(g[0]).max() < 1e-6)  # Equal logits: H J v = 0.
    True
  """
  f32 = lambda x: None if x is None else x.astype(jnp.float32)
  h_Nd, w_dV, dh_Nd, dw_dV = map(f32, (h_Nd, w_dV, dh_Nd, dw_dV))
  has_bias = b_V is not None
  d, v = w_dV.shape
  b_V = f32(b_V) if has_bias else jnp.zeros((v,), jnp.float32)
  db_V = f32(db_V) if has_bias else jnp.zeros((v,), jnp.float32)
  chunk = balanced_chunk(v, chunk)
  log_z = chunked_log_normalizer(h_Nd, w_dV, b_V, scale=scale, chunk=chunk)[0]
  w, b, valid = _chunks(w_dV, b_V, chunk)
  dw, db, _ = _chunks(dw_dV, db_V, chunk)
  weights_N = weights_N.astype(jnp.float32)

  def probs_and_tangent(w_dC, b_C, valid_C, dw_dC, db_C):
    x = scale * (h_Nd @ w_dC + b_C[None, :])
    p = jnp.where(valid_C, jnp.exp(x - log_z[:, None]), 0.0)
    dx = scale * (dh_Nd @ w_dC + h_Nd @ dw_dC + db_C[None, :])
    return p, dx

  def mean_tangent(total, xs):
    p, dx = probs_and_tangent(*xs)
    return total + jnp.sum(p * dx, axis=-1), None

  p_dx, _ = jax.lax.scan(mean_tangent, jnp.zeros_like(log_z),
                         (w, b, valid, dw, db))

  def pull_back(g_h, xs):
    w_dC = xs[0]
    p, dx = probs_and_tangent(*xs)
    u = weights_N[:, None] * p * (dx - p_dx[:, None])
    return g_h + scale * u @ w_dC.T, (scale * h_Nd.T @ u,
                                      scale * jnp.sum(u, axis=0))

  g_h, (g_w, g_b) = jax.lax.scan(pull_back, jnp.zeros_like(h_Nd),
                                 (w, b, valid, dw, db))
  g_w = g_w.transpose(1, 0, 2).reshape(d, -1)[:, :v]
  g_b = g_b.reshape(-1)[:v]
  return g_h, g_w, (g_b if has_bias else None)
