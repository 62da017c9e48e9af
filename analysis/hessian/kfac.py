r"""Kronecker-factored curvature (KFAC, EKFAC) of Flax models, captured
without layer tags.

For a layer :math:`s_t = W^\top a_t (+ b)` applied at positions :math:`t`
(examples, tokens, pixels), the block of the Fisher / GGN of the mean loss
over :math:`P` loss positions is approximated (Martens & Grosse 2015; the
"expand" setting of Eschenhagen et al. 2023 for weight sharing) by

.. math::
   C_W \approx A \otimes G,\quad
   A = \frac1T \sum_t \bar a_t \bar a_t^\top,\quad
   G = \frac{1}{P S} \sum_{s=1}^{S} \sum_t g_{t,s} g_{t,s}^\top,

with :math:`\bar a_t = (a_t, 1)` when the layer has a bias (kernel and bias
are one block), :math:`T` the layer's positions and :math:`g_{t,s} =
\partial \sum_p \ell_p(\hat y_s) / \partial s_t` at labels
:math:`\hat y_s` sampled from the model (``flavour='fisher'``, the GGN's
Monte-Carlo estimate, ``likelihood.num_samples`` draws, the same draws as
``kind='fisher'``), at the data's labels (``'empirical'``), or at the
columns of the output Hessian's square root (``'exact'``, the expectation:
:math:`C` backward passes for :math:`C` classes; exact where each layer
position feeds one loss position, as in MLPs and CNN classifiers). Layers
are found by intercepting ``nn.Dense``, ``nn.DenseGeneral`` (attention
projections: the block is the whole weight, heads included as its shape
says) and ``nn.Conv`` calls (``flax.linen.intercept_methods``): their inputs
are recorded and a zero perturbation added to their outputs, whose gradient
is :math:`g`. Other parameters (norms, embeddings) get zero curvature.

EKFAC (George et al. 2018) keeps KFAC's eigenbasis :math:`Q_A \otimes Q_G`
and replaces its eigenvalues by the second moments of per-example
gradients in that basis, :math:`s_{ij} = \frac{1}{PS} \sum_{n,s}
(Q_A^\top \nabla_W \ell_{n,s} Q_G)_{ij}^2`: the diagonal of the (sampled)
Fisher in KFAC's eigenbasis, exactly.

Both are a `Kronecker` value (eigenbases and eigenvalues per layer): its
eigenvalues are exact (`eigenvalues`), it multiplies (`apply`, power 1),
inverts with damping (power -1) and gives the KFAC-preconditioned sharpness
(`preconditioned_sharpness`). ``curvature('kfac' | 'ekfac', ...)`` (the
registry's entries) wraps it as an `Operator`, so every solver takes it.

References:
  Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
  Approximate Curvature" (ICML 2015). Grosse & Martens, "A
  Kronecker-factored approximate Fisher matrix for convolution layers"
  (ICML 2016). George et al., "Fast Approximate Natural Gradient Descent in
  a Kronecker-factored Eigenbasis" (NeurIPS 2018). Eschenhagen et al.,
  "Kronecker-Factored Approximate Curvature for Modern Neural Network
  Architectures" (NeurIPS 2023).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from analysis.hessian import likelihood as likelihood_lib
from analysis.hessian.kfac_layers import (FLAVOURS, Layer, find_layers,
                                          layer_data)
from dynamics.types import PyTree, param_names


class Kronecker(NamedTuple):
  """Eigenbases and eigenvalues of each layer's block (a pytree of arrays;
  ``layers`` is static).

  Attributes:
    layers: the `Layer` blocks, in the model's call order.
    q_in: ``{name: (d_in, d_in)}`` eigenvectors of A.
    q_out: ``{name: (d_out, d_out)}`` eigenvectors of G.
    eig: ``{name: (d_in, d_out)}`` the block's eigenvalues in that basis
      (KFAC: ``outer(eig A, eig G)``; EKFAC: the corrected ones).
  """
  layers: Tuple[Layer, ...]
  q_in: Dict[str, jax.Array]
  q_out: Dict[str, jax.Array]
  eig: Dict[str, jax.Array]


jax.tree_util.register_pytree_node(
    Kronecker, lambda k: ((k.q_in, k.q_out, k.eig), k.layers),
    lambda layers, c: Kronecker(layers, *c))


@functools.lru_cache(maxsize=32)
def _statistics_fn(model_fn, likelihood, flavour, layers, call_names):
  """Jitted ``(params, batch, index) -> {name: (sum a a^T, T, sum g g^T
  weighted)}`` for one batch."""

  @jax.jit
  def statistics(params, batch, index):
    data, weight = layer_data(model_fn, likelihood, flavour, layers,
                               call_names, params, batch, index)
    out = {}
    for name, (x, g) in data.items():
      x = x.reshape(-1, x.shape[-1])
      g = g.reshape(-1, g.shape[-1])
      out[name] = (x.T @ x, jnp.asarray(x.shape[0], x.dtype),
                   weight * (g.T @ g))
    return out

  return statistics


@functools.lru_cache(maxsize=32)
def _correction_fn(model_fn, likelihood, flavour, layers, call_names):
  """Jitted ``(params, batch, index, q_in, q_out) -> {name: sum over
  examples and samples of (Q_A^T grad_n Q_G)^2, weighted}``."""

  @jax.jit
  def correction(params, batch, index, q_in, q_out):
    data, weight = layer_data(model_fn, likelihood, flavour, layers,
                               call_names, params, batch, index)
    out = {}
    for name, (x, g) in data.items():
      # Per-example gradients in the eigenbasis: sum over the positions.
      grads = jnp.einsum('nti,sntj->snij', x @ q_in[name], g @ q_out[name])
      out[name] = weight * jnp.sum(grads ** 2, axis=0).sum(0)
    return out

  return correction


def _select(stacked, i):
  return jax.tree.map(lambda x: x[i], stacked)


def factors(model_fn: Callable, params: PyTree, batches: PyTree, *,
            likelihood: Any = 'categorical', flavour: str = 'fisher',
            eigenvalue_correction: bool = False, first_index: Any = 0
            ) -> Kronecker:
  r"""KFAC (or EKFAC) of the mean loss over stacked ``batches``.

  The factors :math:`A` and :math:`G` are pooled over the batches (each
  weighted equally), eigendecomposed, and for EKFAC a second pass measures
  the per-example second moments in their eigenbasis.

  Args:
    model_fn: ``(params, batch) -> outputs`` running a Flax module's
      ``apply`` (its Dense/DenseGeneral/Conv calls are intercepted).
    params: the point.
    batches: batches stacked along a leading axis (``index`` ``b`` of batch
      ``b`` seeds its sampled labels, as for ``kind='fisher'``).
    likelihood: a `Likelihood` or 'categorical'.
    flavour: 'fisher' (sampled labels), 'empirical' (the data's labels) or
      'exact' (the expectation over labels: the GGN's factors).
    eigenvalue_correction: EKFAC instead of KFAC.
    first_index: the index of the first batch (its labels' seed).

  Returns:
    A `Kronecker`.

  Raises:
    ValueError: an unknown flavour, or no supported layer in ``model_fn``.
    NotImplementedError: see `find_layers`.
  """
  if flavour not in FLAVOURS:
    raise ValueError(f'flavour must be one of {FLAVOURS}, got {flavour!r}')
  likelihood = likelihood_lib.as_likelihood(likelihood)
  num = jax.tree.leaves(batches)[0].shape[0]
  layers, call_names = find_layers(model_fn, params, _select(batches, 0))
  if not layers:
    raise ValueError('KFAC found no nn.Dense, nn.DenseGeneral or nn.Conv call '
                     'in model_fn: it must run a Flax module\'s apply')
  stats_fn = _statistics_fn(model_fn, likelihood, flavour, layers, call_names)
  sums = None
  for b in range(num):
    stats = stats_fn(params, _select(batches, b), first_index + b)
    sums = stats if sums is None else jax.tree.map(jnp.add, sums, stats)
  q_in, q_out, eig, eig_in, eig_out = {}, {}, {}, {}, {}
  for layer in layers:
    aa, count, gg = sums[layer.name]
    eig_in[layer.name], q_in[layer.name] = jnp.linalg.eigh(aa / count)
    eig_out[layer.name], q_out[layer.name] = jnp.linalg.eigh(gg / num)
    eig[layer.name] = jnp.outer(jnp.maximum(eig_in[layer.name], 0),
                                jnp.maximum(eig_out[layer.name], 0))
  if eigenvalue_correction:
    fn = _correction_fn(model_fn, likelihood, flavour, layers, call_names)
    total = None
    for b in range(num):
      c = fn(params, _select(batches, b), first_index + b, q_in, q_out)
      total = c if total is None else jax.tree.map(jnp.add, total, c)
    eig = {name: value / num for name, value in total.items()}
  return Kronecker(layers, q_in, q_out, eig)


def eigenvalues(kron: Kronecker) -> Dict[str, np.ndarray]:
  """Every eigenvalue of each layer's block, descending (exact: the
  products of the factors' eigenvalues, or EKFAC's corrected ones)."""
  return {name: np.sort(np.asarray(e).ravel())[::-1]
          for name, e in kron.eig.items()}


def _matrix(layer, leaves, dtype):
  w = leaves[layer.kernel].reshape(-1, layer.d_out)
  if layer.bias is not None:
    w = jnp.concatenate([w, leaves[layer.bias].reshape(1, layer.d_out)])
  return w.astype(dtype)


def apply(kron: Kronecker, v: PyTree, power: float = 1.0,
          damping: float = 0.0) -> PyTree:
  r""":math:`(C + \delta I)^{p} v` for the block-diagonal Kronecker
  :math:`C`: in each layer's eigenbasis, :math:`Q (\Lambda + \delta)^p
  Q^	op`. ``power=-1`` with ``damping > 0`` is the damped inverse;
  parameters outside the layers are multiplied by :math:`\delta^p` (0 for
  ``power > 0`` without damping)."""
  flat, treedef = jax.tree_util.tree_flatten(v)
  names = param_names(v)
  leaves = dict(zip(names, flat))
  out = {}
  for layer in kron.layers:
    q_in, q_out = kron.q_in[layer.name], kron.q_out[layer.name]
    w = _matrix(layer, leaves, q_in.dtype)
    scale = (kron.eig[layer.name] + damping) ** power
    w = q_in @ (scale * (q_in.T @ w @ q_out)) @ q_out.T
    kernel = leaves[layer.kernel]
    rows = w[:w.shape[0] - (layer.bias is not None)]
    out[layer.kernel] = rows.reshape(kernel.shape).astype(kernel.dtype)
    if layer.bias is not None:
      bias = leaves[layer.bias]
      out[layer.bias] = w[-1].reshape(bias.shape).astype(bias.dtype)
  rest = jnp.asarray(damping, jnp.float32) ** power
  return jax.tree_util.tree_unflatten(
      treedef, [out[n] if n in out else rest * x for n, x in zip(names, flat)])


@jax.jit
def _apply_jit(kron, power, damping, v):
  return apply(kron, v, power, damping)


def matvec(kron: Kronecker, power: float = 1.0, damping: float = 0.0
           ) -> Partial:
  """``v -> (C + damping I)^power v`` as a `Partial` (one compilation per
  layer layout, whatever the factors)."""
  return Partial(_apply_jit, kron, jnp.float32(power), jnp.float32(damping))


def _symmetric_apply(op_matvec, kron, damping, v):
  """``P^{-1/2} C P^{-1/2} v`` with ``P = K + damping I``."""
  w = apply(kron, v, -0.5, damping)
  return apply(kron, op_matvec(w), -0.5, damping)


def preconditioned_sharpness(op: Any, kron: Kronecker, damping: float, *,
                             key: Optional[jax.Array] = None,
                             tol: Optional[float] = None,
                             num_iters: Optional[int] = None) -> float:
  r"""KFAC-preconditioned sharpness :math:`\lambda_{\max}((K + \delta
  I)^{-1} H)`: the curvature a KFAC / natural-gradient step of damping
  :math:`\delta` sees (stable below :math:`2/\eta`), by Lanczos on the
  similar symmetric :math:`P^{-1/2} H P^{-1/2}`.

  Args:
    op: the `Operator` of :math:`H` (or any curvature), unrestricted.
    kron: `factors` at the same point.
    damping: :math:`\delta > 0`.
    key, tol, num_iters: as in `top_eigenpairs`.

  Returns:
    The top eigenvalue, a float.
  """
  from analysis import lanczos as lz
  if not damping > 0:
    raise ValueError(f'damping must be > 0, got {damping!r}')
  sym = Partial(_symmetric_apply, op.matvec, kron, jnp.float32(damping))
  out = lz.eigsh(sym, op.like, 1, tol=tol,
                 key=jax.random.PRNGKey(0) if key is None else key,
                 max_matvecs=num_iters, mask=op.mask, dim=op.dim,
                 name='kfac_preconditioned_sharpness', unit='HVPs')
  return float(out.eigvals[0])
