"""Small building blocks shared by the models: norms, activations, and the
``Knobs`` that turn a model's init / parametrization / quantization options
into the ``kernel_init`` and ``dot_general`` of each linear layer.

Every option at its default gives back exactly the Flax defaults (LeCun-normal
kernels, ``lax.dot_general``), so default models are bit-for-bit unchanged.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynamics import quantization

NORM_POSITIONS = ('pre', 'post', 'peri', 'mix', 'deepnorm')
POSITIONS = ('learned', 'rope')
MLPS = ('gelu', 'swiglu')
# What a rematerialized block keeps for the backward pass (``jax.checkpoint``
# policies): 'full' keeps only its input and recomputes everything; 'dots'
# also keeps the outputs of matmuls against weights (no batch dimensions), so
# only attention and elementwise ops are recomputed.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
INITS = ('default', 'lecun', 'he', 'orthogonal', 'fixup', 'zero')
PARAMETRIZATIONS = ('standard', 'ntk', 'mup')
ACTIVATIONS = {
    'gelu': nn.gelu,
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'silu': nn.silu,
}

Initializer = Callable[..., jax.Array]


class DyT(nn.Module):
  """Dynamic Tanh, a drop-in replacement for a normalization layer.

  .. math:: \\mathrm{DyT}(x) = \\gamma \\odot \\tanh(\\alpha x) + \\beta

  with a learnable scalar ``alpha`` (initialized to ``alpha_init``) and a
  per-channel affine ``gamma`` (``scale``, ones) and ``beta`` (``bias``, zeros)
  over the last axis.

  References:
    Zhu, Chen, He, LeCun and Liu, "Transformers without Normalization",
    CVPR 2025. https://arxiv.org/abs/2503.10622
  """
  alpha_init: float = 0.5
  scale_init: float = 1.0

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(self.alpha_init), ())
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.constant(self.scale_init),
                       (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    per_channel = (1,) * (x.ndim - 1) + (features,)
    return (jnp.tanh(alpha * x) * scale.reshape(per_channel)
            + bias.reshape(per_channel))


class Identity(nn.Module):

  @nn.compact
  def __call__(self, x):
    return x


def _layernorm(name, train, dtype, extra, use_bias):
  del train
  if not use_bias:
    extra['use_bias'] = False
  return nn.LayerNorm(name=name, dtype=dtype, **extra)


# ``config.model.norm``: ``(name, train, dtype, extra, use_bias) -> module``,
# ``extra`` the scale init of a zero-started norm.
NORMS: Dict[str, Callable[..., nn.Module]] = {
    'layernorm': _layernorm,
    'rmsnorm': lambda name, train, dtype, extra, use_bias: nn.RMSNorm(
        name=name, dtype=dtype, **extra),
    'batchnorm': lambda name, train, dtype, extra, use_bias: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, name=name, dtype=dtype,
        **extra),
    'none': lambda name, train, dtype, extra, use_bias: Identity(name=name),
    'dyt': lambda name, train, dtype, extra, use_bias: DyT(
        name=name, scale_init=0.0 if extra else 1.0),
}


def make_norm(kind: str, name: str, *, train: bool = False,
              dtype=jnp.float32, zero_scale: bool = False,
              use_bias: bool = True) -> nn.Module:
  """A normalization module; every name contains 'norm' (SAM-ON masks on it).

  ``zero_scale`` starts its learnable scale at 0 (the output is then its bias,
  0): how Fixup / ZerO zero a residual branch that ends in a norm.
  ``use_bias=False`` drops LayerNorm's bias (RMSNorm has none).
  """
  if kind not in NORMS:
    raise ValueError(f'model.norm must be one of {tuple(NORMS)}, got {kind!r}')
  extra = {'scale_init': nn.initializers.zeros} if zero_scale else {}
  return NORMS[kind](name, train, dtype, extra, use_bias)


def output_head(x: jax.Array, num_outputs: int, knobs: 'Knobs', *,
                dtype: Any = jnp.float32, output_scale: float = 1.0,
                use_bias: bool = True,
                init: Optional[Callable[..., Dict[str, Any]]] = None
                ) -> jax.Array:
  """The readout of the MLP and the CNNs: a Dense named ``head`` (muP's
  output layer, ``knobs.linear('output', ...)``; ``init`` may rewrite its
  kwargs) times ``output_scale``, in at least float32. Call it inside a
  module's ``@nn.compact`` method."""
  kwargs = knobs.linear('output', x.shape[-1])
  if init is not None:
    kwargs = init(kwargs)
  y = nn.Dense(num_outputs, use_bias=use_bias, dtype=dtype, name='head',
               **kwargs)(x)
  return output_scale * y.astype(jnp.promote_types(y.dtype, jnp.float32))


def depth_scale(enabled: bool, depth: int) -> float:
  """LayerNorm Scaling: the ``1 / sqrt(depth)`` factor on a norm's output at
  1-based ``depth`` (Sun et al., "The Curse of Depth in Large Language
  Models", 2025, https://arxiv.org/abs/2502.05795); 1 when disabled."""
  return 1.0 / math.sqrt(depth) if enabled else 1.0


def scaled(y: jax.Array, factor: float) -> jax.Array:
  # Multiplying by exactly 1.0 is the identity, but skipping it keeps the
  # default graph untouched.
  return y if factor == 1.0 else y * jnp.asarray(factor, y.dtype)


def swiglu_hidden(d_model: int, multiple_of: int = 256) -> int:
  """LLaMA's SwiGLU hidden size: ``int(2/3 * 4 d)`` rounded up to a multiple
  of ``multiple_of``, which keeps the gated MLP's parameter count near a
  ``4 d`` GELU MLP's (Touvron et al., "LLaMA", 2023, reference code).

  Example:
    >>> swiglu_hidden(4096), swiglu_hidden(512)
    (11008, 1536)
  """
  hidden = int(2 * 4 * d_model / 3)
  return multiple_of * -(-hidden // multiple_of)


def rope_angles(seq_len: int, head_dim: int, theta: float
                ) -> Tuple[jax.Array, jax.Array]:
  """``(cos, sin)`` of RoPE's angles ``t * theta^(-2i / head_dim)``, each of
  shape ``(seq_len, head_dim // 2)`` (float32)."""
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32)
                       / head_dim)
  angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, theta: float = 10_000.0) -> jax.Array:
  r"""Rotary position embedding of queries or keys ``x`` of shape ``(B, T, H, D)``.

  Channel ``i < D/2`` and channel ``i + D/2`` of position ``t`` form a pair
  rotated by the angle :math:`t\,\theta^{-2i/D}` (the "rotate-half" layout
  of GPT-NeoX and Hugging Face LLaMA, a fixed permutation of the paper's
  interleaved pairs). Rotations compose, so
  :math:`\langle R_s q, R_t k\rangle = \langle q, R_{t-s} k\rangle`: the
  attention score depends on the positions only through ``t - s``.

  Args:
    x: ``(batch, seq, heads, head_dim)`` with an even ``head_dim``.
    theta: the base period (10,000 in RoFormer and LLaMA).

  Returns:
    The rotated array, same shape and dtype (computed in float32).

  Example:
    >>> x = jnp.ones((1, 2, 1, 2))    # head_dim 2: one pair, angle t
    >>> [round(float(v), 4) for v in apply_rope(x)[0, 1, 0]]  # t = 1
    [-0.3012, 1.3818]

  References:
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position
    Embedding", 2021. https://arxiv.org/abs/2104.09864
  """
  _, seq_len, _, head_dim = x.shape
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}')
  cos, sin = rope_angles(seq_len, head_dim, theta)
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(
        f'model.activation must be one of {tuple(ACTIVATIONS)}, got {name!r}')
  return ACTIVATIONS[name]


# --- Initialization and parametrization -------------------------------------


def identity_init(key, shape, dtype=jnp.float32) -> jax.Array:
  """IDInit-style identity: ``W[i, j] = 1`` where ``i = j`` modulo the smaller
  dimension (the identity repeated along the longer one), at the centre tap
  of a convolution kernel and zero elsewhere. Shape ``(..., fan_in, fan_out)``.

  Pan et al., "IDInit: A Universal and Stable Initialization Method for Neural
  Network Training", ICLR 2025; Zhao et al., "ZerO Initialization", TMLR 2022.
  """
  del key
  n_in, n_out = shape[-2], shape[-1]
  i, j = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing='ij')
  eye = ((i % n_out == j) if n_in >= n_out else (j % n_in == i)).astype(np.float32)
  kernel = np.zeros(shape, np.float32)
  centre = tuple(s // 2 for s in shape[:-2])
  kernel[centre] = eye
  return jnp.asarray(kernel, dtype)


def _base_init(init: str) -> Initializer:
  if init == 'he':
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')
  if init == 'orthogonal':
    return nn.initializers.orthogonal()
  # default | lecun | fixup | zero: LeCun normal, Flax's default for kernels.
  return nn.initializers.lecun_normal()


def _scaled_init(base: Initializer, factor: float,
                 column_factors: Optional[tuple] = None) -> Initializer:
  """``base`` times ``factor``; ``column_factors=(start_fraction, f)`` also
  multiplies the trailing columns from ``start_fraction`` of the output dim."""
  if factor == 1.0 and column_factors is None:
    return base

  def init(key, shape, dtype=jnp.float32):
    w = base(key, shape, dtype) * jnp.asarray(factor, dtype)
    if column_factors is not None:
      start_fraction, f = column_factors
      start = int(round(start_fraction * shape[-1]))
      col = jnp.where(jnp.arange(shape[-1]) >= start, f, 1.0).astype(dtype)
      col = col.reshape((1,) * (len(shape) - 1) + (-1,))
      w = w * col
    return w

  return init


@dataclasses.dataclass(frozen=True)
class Knobs:
  """A model's init / parametrization / quantization options (hashable).

  Attributes:
    init: 'default' | 'lecun' | 'he' | 'orthogonal' | 'fixup' | 'zero'.
    init_scale: multiplies every initialized kernel's std.
    parametrization: 'standard' | 'ntk' | 'mup'.
    width_mult: muP's ``width / base_width`` (1 otherwise).
    quantization: None | 'int4' | 'fp4'.
  """
  init: str = 'default'
  init_scale: float = 1.0
  parametrization: str = 'standard'
  width_mult: float = 1.0
  quantization: Optional[str] = None

  def linear(self, role: str, fan_in: int, *, branch_last: bool = False,
             branch_first: bool = False, num_branches: int = 1,
             shortcut: bool = False, extra_scale: float = 1.0,
             column_factors: Optional[tuple] = None, conv: bool = False
             ) -> Dict[str, Any]:
    """``kernel_init`` and ``dot_general`` (or ``conv_general_dilated``) kwargs.

    Args:
      role: 'input' (fan-in fixed as width grows), 'hidden' or 'output'.
      fan_in: the layer's fan-in (``kh * kw * c_in`` for convolutions).
      branch_last: last layer of a residual branch (Fixup / ZerO zero it).
      branch_first: other layer of a residual branch (Fixup rescales it by
        ``num_branches ** -1/2``; ZerO makes it an identity).
      num_branches: residual branches in the network (Fixup's ``L``).
      shortcut: a projection shortcut (ZerO makes it an identity too).
      extra_scale: a further multiplier on the init (DeepNet's beta).
      column_factors: ``(start_fraction, f)``: multiply trailing output
        columns by ``f`` (DeepNet scales only the value part of a fused qkv).
      conv: return ``conv_general_dilated`` instead of ``dot_general``.

    Returns:
      Keyword arguments for ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Conv``;
      empty when every option is at its default.
    """
    # Forward multiplier and the matching init factor: NTK stores N(0, sigma^2)
    # weights and divides by sqrt(fan_in) in the forward pass (same function at
    # init, different gradient scale); muP's readout is multiplied by 1/r and
    # initialized at zero (Yang et al., Tensor Programs V, Table 3 allows 0 or
    # variance 1/fan_in^2; App. D.2 recommends 0): a nonzero init's share of
    # the output shrinks with width, which tilts the readout's coordinate
    # check at finite width (experiments/reproductions/mup_coordinate_check).
    multiplier, factor = 1.0, self.init_scale * extra_scale
    mup_readout = self.parametrization == 'mup' and role == 'output'
    if self.parametrization == 'ntk':
      multiplier, factor = 1.0 / math.sqrt(fan_in), factor * math.sqrt(fan_in)
    elif mup_readout:
      multiplier = 1.0 / self.width_mult
    if (self.init in ('fixup', 'zero') and branch_last) or mup_readout:
      kernel_init = nn.initializers.zeros
    elif self.init == 'zero' and (branch_first or shortcut):
      kernel_init = _scaled_init(identity_init, self.init_scale * extra_scale,
                                 column_factors)
    else:
      if self.init == 'fixup' and branch_first:
        # Fixup: branches of m = 2 layers are rescaled by L^(-1/(2m-2)).
        factor *= num_branches ** -0.5
      kernel_init = _scaled_init(_base_init(self.init), factor, column_factors)
    if self.is_default and extra_scale == 1.0 and column_factors is None:
      return {}  # Flax's own defaults: the untouched code path.
    kwargs: Dict[str, Any] = {'kernel_init': kernel_init}
    make = quantization.quantized_conv if conv else quantization.quantized_dot_general
    op = make(self.quantization, multiplier)
    if op is not None:
      kwargs['conv_general_dilated' if conv else 'dot_general'] = op
    return kwargs

  @property
  def is_default(self) -> bool:
    return self == Knobs()


def knobs_from_config(m: Any, width: int) -> Knobs:
  """``Knobs`` of ``config.model``; ``width`` is what muP's ``base_width`` is
  the reference for (transformer ``d_model``, the first MLP hidden size, the
  first CNN/ResNet channel count)."""
  width_mult = 1.0
  if m.parametrization == 'mup':
    width_mult = width / float(m.base_width)
  return Knobs(init=m.init, init_scale=float(m.init_scale),
               parametrization=m.parametrization, width_mult=width_mult,
               quantization=m.quantization)
