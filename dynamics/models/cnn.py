"""Small convolutional networks: a plain CNN and a CIFAR-style ResNet."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dynamics.models import layers


class CNN(nn.Module):
  """``Conv3x3 -> norm -> act -> avgpool`` per entry of ``channels``, then a head.

  ``layernorm_scaling`` scales norm ``i``'s output by ``1 / sqrt(i + 1)``;
  ``knobs`` (``layers.Knobs``) set init / parametrization / quantization
  (``conv_0`` is muP's input layer, ``head`` its output layer).
  """
  channels: Sequence[int] = (16, 32)
  num_outputs: int = 10
  activation: str = 'relu'
  norm: str = 'batchnorm'
  output_scale: float = 1.0
  layernorm_scaling: bool = False
  knobs: layers.Knobs = layers.Knobs()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = x.astype(self.dtype)
    for i, ch in enumerate(self.channels):
      role = 'input' if i == 0 else 'hidden'
      x = nn.Conv(ch, (3, 3), use_bias=self.norm == 'none', dtype=self.dtype,
                  name=f'conv_{i}',
                  **self.knobs.linear(role, 9 * x.shape[-1], conv=True))(x)
      x = layers.make_norm(self.norm, f'norm_{i}', train=train)(x)
      x = layers.scaled(x, layers.depth_scale(self.layernorm_scaling, i + 1))
      x = act(x)
      if min(x.shape[1:3]) >= 2:
        x = nn.avg_pool(x, (2, 2), (2, 2))
    return layers.output_head(jnp.mean(x, axis=(1, 2)), self.num_outputs,
                              self.knobs, dtype=self.dtype,
                              output_scale=self.output_scale)


class ResidualBlock(nn.Module):
  """Basic ResNet block ``act(shortcut(x) + norm(conv(act(norm(conv(x))))))``
  (He et al., 2016).

  With ``knobs.init`` 'fixup' or 'zero' the branch starts at zero: its last
  layer (``norm_1``'s scale, or ``conv_1`` when ``norm='none'``) is zero, so
  a block whose shape does not change computes ``act(x)`` -- ``x`` itself for
  the non-negative inputs a ReLU network feeds it. Fixup also rescales
  ``conv_0`` by ``num_blocks ** -1/2``; ZerO makes ``conv_0`` and the
  projection shortcut identity-like.
  """
  channels: int
  strides: int = 1
  norm: str = 'batchnorm'
  activation: str = 'relu'
  dtype: jnp.dtype = jnp.float32
  knobs: layers.Knobs = layers.Knobs()
  num_blocks: int = 1
  norm_scale: float = 1.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    k, fan_in = self.knobs, 9 * x.shape[-1]
    zero_branch = k.init in ('fixup', 'zero')
    residual = x
    y = nn.Conv(self.channels, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv_0',
                **k.linear('hidden', fan_in, branch_first=True,
                           num_branches=self.num_blocks, conv=True))(x)
    y = layers.make_norm(self.norm, 'norm_0', train=train)(y)
    y = act(layers.scaled(y, self.norm_scale))
    y = nn.Conv(self.channels, (3, 3), use_bias=False, dtype=self.dtype,
                name='conv_1',
                **k.linear('hidden', 9 * self.channels,
                           branch_last=self.norm == 'none', conv=True))(y)
    # The last norm of the branch: zero-init style schemes act on its scale.
    y = layers.make_norm(self.norm, 'norm_1', train=train,
                         zero_scale=zero_branch and self.norm != 'none')(y)
    y = layers.scaled(y, self.norm_scale)
    if residual.shape != y.shape:
      residual = nn.Conv(self.channels, (1, 1), self.strides, use_bias=False,
                         dtype=self.dtype, name='conv_proj',
                         **k.linear('hidden', x.shape[-1], shortcut=True,
                                    conv=True))(residual)
      residual = layers.make_norm(self.norm, 'norm_proj', train=train)(residual)
      residual = layers.scaled(residual, self.norm_scale)
    return act(residual + y)


class ResNet(nn.Module):
  """A small ResNet: a stem, then stages of ``ResidualBlock``s, then a head.

  ``layernorm_scaling`` scales the stem's norm by 1 and block ``b``'s
  (0-based, counted over all stages) by ``1 / sqrt(b + 2)``.
  """
  channels: Sequence[int] = (16, 32)
  blocks_per_stage: int = 1
  num_outputs: int = 10
  activation: str = 'relu'
  norm: str = 'batchnorm'
  output_scale: float = 1.0
  layernorm_scaling: bool = False
  knobs: layers.Knobs = layers.Knobs()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = nn.Conv(self.channels[0], (3, 3), use_bias=False, dtype=self.dtype,
                name='stem',
                **self.knobs.linear('input', 9 * x.shape[-1], conv=True)
                )(x.astype(self.dtype))
    x = act(layers.make_norm(self.norm, 'norm_stem', train=train)(x))
    num_blocks = len(self.channels) * self.blocks_per_stage
    for s, ch in enumerate(self.channels):
      for b in range(self.blocks_per_stage):
        strides = 2 if (s > 0 and b == 0 and min(x.shape[1:3]) >= 2) else 1
        depth = 2 + s * self.blocks_per_stage + b
        x = ResidualBlock(
            ch, strides, self.norm, self.activation, self.dtype, self.knobs,
            num_blocks, layers.depth_scale(self.layernorm_scaling, depth),
            name=f'stage{s}_block{b}')(x, train=train)
    return layers.output_head(jnp.mean(x, axis=(1, 2)), self.num_outputs,
                              self.knobs, dtype=self.dtype,
                              output_scale=self.output_scale)
