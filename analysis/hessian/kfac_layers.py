"""The layers of a Flax model as KFAC sees them, captured without layer
tags: `find_layers` and `layer_data` intercept ``nn.Dense``,
``nn.DenseGeneral`` and ``nn.Conv`` calls (``flax.linen.intercept_methods``),
record their inputs (patches for convolutions) and add a zero perturbation
to their outputs, whose gradient is the output gradient :math:`g`. The math
is in `analysis.hessian.kfac`."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def layer_data(model_fn, likelihood, flavour, layers, call_names, params,
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


