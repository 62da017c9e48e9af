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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from analysis.hessian import likelihood as likelihood_lib
from dynamics.types import Batch, PyTree, param_names

FLAVOURS = ('fisher', 'empirical', 'exact')


class Layer(NamedTuple):
  """A Kronecker block (static): the layer's name, its kernel's and bias's
  parameter names, and the block's sizes (``d_in`` counts the bias row)."""
  name: str
  kernel: str
  bias: Optional[str]
  d_in: int
  d_out: int


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


def _tuple(v, n):
  if v is None:
    return (1,) * n
  return (v,) * n if isinstance(v, int) else tuple(v)


def _unsupported(module, why):
  return NotImplementedError(
      f'KFAC: layer {module.name!r} ({type(module).__name__}) '
      f'{why}')


def _rows(module, x, kernel_shape):
  """The layer's inputs as rows ``(T, d_in)`` (patches for convolutions)."""
  if isinstance(module, nn.Conv):
    if getattr(module, 'conv_general_dilated', None) is not None:
      raise _unsupported(module, 'has a custom convolution')
    if module.feature_group_count != 1 or not isinstance(
        module.padding, (str, int, tuple, list)) or module.padding in (
            'CIRCULAR', 'CAUSAL'):
      raise _unsupported(module, 'has groups or circular/causal padding')
    n = len(kernel_shape) - 2
    padding = module.padding
    if not isinstance(padding, str):
      padding = [(p, p) if isinstance(p, int) else tuple(p)
                 for p in _tuple(padding, n)]
    spec = 'N' + 'HWD'[:n] + 'C'
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel_shape[:n], _tuple(module.strides, n), padding,
        lhs_dilation=_tuple(module.input_dilation, n),
        rhs_dilation=_tuple(module.kernel_dilation, n),
        dimension_numbers=(spec, spec.replace('N', 'O').replace('C', 'I'),
                           spec))
    c_in, k = x.shape[-1], int(np.prod(kernel_shape[:n]))
    # Patches come channel-major (C, *window); kernels are (*window, C).
    patches = patches.reshape(patches.shape[:-1] + (c_in, k))
    return jnp.swapaxes(patches, -1, -2).reshape(-1, c_in * k)
  if getattr(module, 'dot_general', None) is not None or getattr(
      module, 'dot_general_cls', None) is not None:
    raise _unsupported(module, 'has a custom dot_general (quantized or '
                       'NTK-scaled): its inputs are not the weight gradient')
  if isinstance(module, nn.DenseGeneral):
    if module.batch_dims:
      raise _unsupported(module, 'has batch_dims')
    axes = tuple(a % x.ndim for a in _tuple(module.axis, 1))
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
  d_in = int(np.prod(kernel_shape)) // int(np.prod(kernel_shape[-1:]))
  if isinstance(module, nn.DenseGeneral):
    d_in = int(np.prod(x.shape[x.ndim - len(axes):]))
  return x.reshape(-1, d_in)


def _run(model_fn, params, batch, perturbations=None):
  """``model_fn(params, batch)`` with the supported layers' calls recorded:
  ``(outputs, [(module, name, inputs, outputs' shape, kernel's shape)])``; ``perturbations[i]``
  is added to the ``i``-th call's output."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(
        module, (nn.Dense, nn.DenseGeneral, nn.Conv)):
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    if perturbations is not None:
      y = y + perturbations[len(calls)].astype(y.dtype)
    calls.append((module, '/'.join(module.path), args[0], y.shape,
                  module.get_variable('params', 'kernel').shape))
    return y

  with nn.intercept_methods(interceptor):
    outputs = model_fn(params, batch)
  return outputs, calls


def find_layers(model_fn: Callable, params: PyTree, batch: Batch
                ) -> Tuple[Tuple[Layer, ...], Tuple[str, ...]]:
  """The Kronecker blocks of ``model_fn`` (traced once, nothing computed).

  Returns:
    ``(layers, call_names)``: the distinct layers, and the layer name of
    each intercepted call in order (a layer called twice shares weights).

  Raises:
    NotImplementedError: a layer whose inputs are not its weight gradient's
      (custom dot_general / convolution, grouped convolution).
  """
  uses = []
  names = set(param_names(params))

  def trace(p, b):
    _, calls = _run(model_fn, p, b)
    for module, name, x, _, kernel_shape in calls:
      uses.append((name, _rows(module, x, kernel_shape).shape[-1],
                   kernel_shape))
    return 0

  jax.eval_shape(trace, params, batch)
  layers = {}
  for name, d_in, kernel_shape in uses:
    if f'{name}/kernel' not in names:
      raise NotImplementedError(
          f'KFAC: layer {name!r} has no parameter {name}/kernel (a lifted '
          'transform such as nn.scan stacks its weights)')
    bias = f'{name}/bias' if f'{name}/bias' in names else None
    d_out = int(np.prod(kernel_shape)) // d_in
    layers.setdefault(name, Layer(name, f'{name}/kernel', bias,
                                  d_in + (bias is not None), d_out))
  return tuple(layers.values()), tuple(name for name, _, _ in uses)


def _output_cotangents(outputs, batch, index, likelihood, flavour):
  """``(S, *outputs.shape)`` cotangents and the weight ``1 / (P S)``."""
  positions = likelihood.num_positions(outputs)
  nll_sum = lambda z, y: jnp.sum(likelihood.nll(z, y))
  if flavour == 'exact':
    if likelihood.name == 'categorical':
      probs = jax.nn.softmax(outputs, axis=-1)
      # H = sum_c p_c (p - e_c)(p - e_c)^T at every position.
      eye = jnp.eye(outputs.shape[-1], dtype=outputs.dtype).reshape(
          (-1,) + (1,) * (outputs.ndim - 1) + (outputs.shape[-1],))
      cots = jax.vmap(lambda e: jnp.sqrt(jnp.sum(probs * e, -1, keepdims=True))
                      * (probs - e))(eye)
    else:
      size = int(np.prod(outputs.shape[1:]))
      cots = jnp.eye(size, dtype=outputs.dtype).reshape(
          (size, 1) + outputs.shape[1:]) / likelihood.noise_std
      cots = jnp.broadcast_to(cots, (size,) + outputs.shape)
    return cots, 1.0 / positions
  if flavour == 'empirical':
    labels = batch['targets'][None]
  else:
    key = jax.random.fold_in(jax.random.PRNGKey(likelihood.seed), index)
    labels = likelihood.sample(key, outputs)
  cots = jax.vmap(jax.grad(nll_sum), in_axes=(None, 0))(outputs, labels)
  return cots, 1.0 / (positions * labels.shape[0])


def _layer_data(model_fn, likelihood, flavour, layers, call_names, params,
                batch, index):
  """Per layer: input rows with the bias column ``(T, d_in)`` and output
  gradients ``(S, T, d_out)``, grouped by example ``(n, ...)``, and the
  weight of G."""
  _, calls = _run(model_fn, params, batch)
  perts = [jnp.zeros(shape, x.dtype) for _, _, x, shape, _ in calls]

  def forward(perts):
    outputs, calls = _run(model_fn, params, batch, perts)
    xs = []
    for m, _, x, _, kernel_shape in calls:
      rows = _rows(m, x, kernel_shape)
      xs.append(rows.reshape(x.shape[0], -1, rows.shape[-1]))
    return outputs, xs

  outputs, pullback, xs = jax.vjp(forward, perts, has_aux=True)
  cots, weight = _output_cotangents(outputs, batch, index, likelihood, flavour)
  gs = jax.vmap(lambda c: pullback(c.astype(outputs.dtype))[0])(cots)
  by_layer = {layer.name: layer for layer in layers}
  data = {}
  for name, x, g in zip(call_names, xs, gs):
    layer = by_layer[name]
    if layer.bias is not None:
      x = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], -1)
    g = g.reshape(g.shape[0], x.shape[0], -1, layer.d_out)
    a_old, g_old = data.get(name, (None, None))
    if a_old is not None:  # A layer called again: more positions per example.
      x, g = jnp.concatenate([a_old, x], 1), jnp.concatenate([g_old, g], 2)
    data[name] = (x, g)
  return data, weight


@functools.lru_cache(maxsize=32)
def _statistics_fn(model_fn, likelihood, flavour, layers, call_names):
  """Jitted ``(params, batch, index) -> {name: (sum a a^T, T, sum g g^T
  weighted)}`` for one batch."""

  @jax.jit
  def statistics(params, batch, index):
    data, weight = _layer_data(model_fn, likelihood, flavour, layers,
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
    data, weight = _layer_data(model_fn, likelihood, flavour, layers,
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
    ValueError: an unknown flavour. NotImplementedError: see `find_layers`.
  """
  if flavour not in FLAVOURS:
    raise ValueError(f'flavour must be one of {FLAVOURS}, got {flavour!r}')
  likelihood = likelihood_lib.as_likelihood(likelihood)
  num = jax.tree.leaves(batches)[0].shape[0]
  layers, call_names = find_layers(model_fn, params, _select(batches, 0))
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
  from analysis.hessian import operators
  if not damping > 0:
    raise ValueError(f'damping must be > 0, got {damping!r}')
  sym = Partial(_symmetric_apply, op.matvec, kron, jnp.float32(damping))
  out = lz.eigsh(sym, op.like, 1, key=operators.default_key(key), tol=tol,
                 max_matvecs=num_iters, mask=op.mask, dim=op.dim,
                 name='kfac_preconditioned_sharpness', unit='HVPs')
  return float(out.eigvals[0])
