"""Simulated low-precision training: fake quantization with straight-through gradients.

``config.model.quantization`` names a format; every ``Dense`` / ``DenseGeneral``
/ ``Conv`` of the models then multiplies *quantized* weights by *quantized*
activations (both operands of the matmul), in float32 arithmetic, while the
backward pass treats the rounding as the identity (the straight-through
estimator, Bengio et al., 2013):

.. math::

   \\tilde x = x + \\mathrm{sg}(Q(x) - x), \\qquad
   \\partial \\tilde x / \\partial x = I .

Both formats quantize contiguous blocks of ``BLOCK = 16`` values along the
matmul's contracting axis, each block with its own scale:

* ``int4``: symmetric integers ``{-7, ..., 7}`` with a float32 scale
  ``absmax(block) / 7`` (round half to even). ``-8`` is never used, so the
  grid is symmetric.
* ``fp4`` (NVFP4-style): E2M1 values ``{0, 0.5, 1, 1.5, 2, 3, 4, 6}`` (and
  their negatives), round to nearest, ties to the even code, saturating at 6;
  each block's scale ``absmax(block) / 6`` is itself rounded to FP8 E4M3, and
  a float32 per-tensor scale ``absmax(tensor) / (6 * 448)`` keeps the block
  scales inside E4M3's range -- NVIDIA's two-level NVFP4 scheme.

What stays in full precision: embeddings, the tied output head (an embedding
``attend``), the attention scores ``q k^T`` and ``softmax(.) v``, norms,
biases and the optimizer state -- the usual scope of 4-bit *linear-layer*
training studies (e.g. Stable-SPAM's INT4/FP4 experiments).

References:
  Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
  Adam", 2025. https://arxiv.org/abs/2502.17055
  NVIDIA, "Introducing NVFP4 for Efficient and Accurate Low-Precision
  Inference", 2025 (E2M1 values, 16-element blocks, E4M3 block scales).
  Bengio, Léonard and Courville, "Estimating or Propagating Gradients Through
  Stochastic Neurons", 2013 (straight-through estimator).
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

FORMATS = ('int4', 'fp4')
BLOCK = 16
INT4_MAX = 7.0
FP4_MAX = 6.0
E4M3_MAX = 448.0
# The non-negative E2M1 values; codes 0..7 in order (odd codes have mantissa 1).
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def round_to_e2m1(x: jax.Array) -> jax.Array:
  """Rounds to the nearest FP4 E2M1 value, ties to the even code, saturating.

  ``|x| > 6`` maps to ``+-6``; the sign is kept (``-0.1 -> -0.0``).
  """
  grid = jnp.asarray(E2M1_GRID, x.dtype)
  mids = ((grid[1:] + grid[:-1]) / 2).reshape((1,) * x.ndim + (-1,))
  mag = jnp.abs(x)
  # Number of midpoints strictly below |x|: the lower neighbour on a tie.
  code = jnp.sum(mag[..., None] > mids, axis=-1)
  tie = jnp.any(mag[..., None] == mids, axis=-1)
  code = jnp.where(tie & (code % 2 == 1), code + 1, code)
  return jnp.sign(x) * grid[code]


def round_to_e4m3(x: jax.Array) -> jax.Array:
  """Rounds to FP8 E4M3 (round to nearest even) and back to ``x.dtype``."""
  return x.astype(jnp.float8_e4m3fn).astype(x.dtype)


def _blocks(x: jax.Array, axis: int):
  """``x`` with ``axis`` moved last, zero-padded and split into blocks of 16."""
  x = jnp.moveaxis(x, axis, -1)
  n = x.shape[-1]
  pad = (-n) % BLOCK
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK, BLOCK)), n


def _unblocks(xb: jax.Array, n: int, axis: int) -> jax.Array:
  x = xb.reshape(xb.shape[:-2] + (-1,))[..., :n]
  return jnp.moveaxis(x, -1, axis)


def quantize(x: jax.Array, fmt: str, axis: int = -1) -> jax.Array:
  """``Q(x)``: the values of ``x`` after block quantization to ``fmt``.

  Args:
    x: array to quantize (any float dtype; computed in float32).
    fmt: 'int4' or 'fp4'.
    axis: the axis along which blocks of ``BLOCK`` values share a scale.

  Returns:
    An array of ``x``'s shape and dtype holding dequantized values.

  Example:
    >>> quantize(jnp.arange(16.0), 'int4')[-1]   # absmax maps to 7 exactly
    Array(15., dtype=float32)
  """
  if fmt not in FORMATS:
    raise ValueError(f'model.quantization must be one of {FORMATS} or None, '
                     f'got {fmt!r}')
  dtype = x.dtype
  xb, n = _blocks(x.astype(jnp.float32), axis)
  absmax = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
  if fmt == 'int4':
    scale = absmax / INT4_MAX
    safe = jnp.where(scale > 0, scale, 1.0)
    qb = jnp.clip(jnp.round(xb / safe), -INT4_MAX, INT4_MAX) * scale
  else:
    tensor_scale = jnp.max(absmax) / (FP4_MAX * E4M3_MAX)
    safe_tensor = jnp.where(tensor_scale > 0, tensor_scale, 1.0)
    block_scale = round_to_e4m3(absmax / FP4_MAX / safe_tensor)
    scale = block_scale * safe_tensor
    safe = jnp.where(scale > 0, scale, 1.0)
    qb = jnp.where(scale > 0, round_to_e2m1(xb / safe) * scale, 0.0)
  return _unblocks(qb, n, axis).astype(dtype)


def fake_quant(x: jax.Array, fmt: Optional[str], axis: int = -1) -> jax.Array:
  """``x + stop_gradient(Q(x) - x)``: quantized forward, identity backward."""
  if fmt is None:
    return x
  return x + lax.stop_gradient(quantize(x, fmt, axis) - x)


def quantized_dot_general(fmt: Optional[str], multiplier: float = 1.0
                          ) -> Optional[Callable]:
  """A ``lax.dot_general`` for ``nn.Dense(dot_general=...)`` that fake-quantizes
  both operands along their last contracting axis and multiplies the product
  by ``multiplier`` (the NTK / muP forward multiplier; the bias is added after,
  unscaled). ``None`` when there is nothing to do, so the default stays
  ``lax.dot_general`` itself.
  """
  if fmt is None and multiplier == 1.0:
    return None

  def dot_general(lhs, rhs, dimension_numbers, precision=None,
                  preferred_element_type=None):
    (lhs_contract, rhs_contract), _ = dimension_numbers
    if fmt is not None:
      lhs = fake_quant(lhs, fmt, _last(lhs_contract, lhs.ndim))
      rhs = fake_quant(rhs, fmt, _last(rhs_contract, rhs.ndim))
    y = lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                        preferred_element_type=preferred_element_type)
    return y if multiplier == 1.0 else y * jnp.asarray(multiplier, y.dtype)

  return dot_general


def quantized_conv(fmt: Optional[str], multiplier: float = 1.0
                   ) -> Optional[Callable]:
  """The ``conv_general_dilated`` counterpart for ``nn.Conv`` (NHWC inputs,
  HWIO kernels: blocks along input channels for both operands)."""
  if fmt is None and multiplier == 1.0:
    return None

  def conv(lhs, rhs, *args, **kwargs):
    if fmt is not None:
      lhs = fake_quant(lhs, fmt, -1)
      rhs = fake_quant(rhs, fmt, -2)
    y = lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return y if multiplier == 1.0 else y * jnp.asarray(multiplier, y.dtype)

  return conv


def _last(axes: Sequence[int], ndim: int) -> int:
  return max(a % ndim for a in axes)
