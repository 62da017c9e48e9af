"""Small convolutional networks: a plain CNN and a CIFAR-style ResNet."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dynamics.models import layers


class CNN(nn.Module):
  """``Conv3x3 -> norm -> act -> avgpool`` per entry of ``channels``, then a head."""
  channels: Sequence[int] = (16, 32)
  num_outputs: int = 10
  activation: str = 'relu'
  norm: str = 'batchnorm'
  output_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = x.astype(self.dtype)
    for i, ch in enumerate(self.channels):
      x = nn.Conv(ch, (3, 3), use_bias=self.norm == 'none', dtype=self.dtype,
                  name=f'conv_{i}')(x)
      x = layers.make_norm(self.norm, f'norm_{i}', train=train)(x)
      x = act(x)
      if min(x.shape[1:3]) >= 2:
        x = nn.avg_pool(x, (2, 2), (2, 2))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(x)
    return self.output_scale * x.astype(jnp.float32)


class ResidualBlock(nn.Module):
  """Basic pre-activation-free ResNet block (He et al., 2016)."""
  channels: int
  strides: int = 1
  norm: str = 'batchnorm'
  activation: str = 'relu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    residual = x
    y = nn.Conv(self.channels, (3, 3), self.strides, use_bias=False,
                dtype=self.dtype, name='conv_0')(x)
    y = act(layers.make_norm(self.norm, 'norm_0', train=train)(y))
    y = nn.Conv(self.channels, (3, 3), use_bias=False, dtype=self.dtype,
                name='conv_1')(y)
    # The last norm of the branch: zero-init style schemes act on its scale.
    y = layers.make_norm(self.norm, 'norm_1', train=train)(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.channels, (1, 1), self.strides, use_bias=False,
                         dtype=self.dtype, name='conv_proj')(residual)
      residual = layers.make_norm(self.norm, 'norm_proj', train=train)(residual)
    return act(residual + y)


class ResNet(nn.Module):
  """A small ResNet: a stem, then stages of ``ResidualBlock``s, then a head."""
  channels: Sequence[int] = (16, 32)
  blocks_per_stage: int = 1
  num_outputs: int = 10
  activation: str = 'relu'
  norm: str = 'batchnorm'
  output_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = nn.Conv(self.channels[0], (3, 3), use_bias=False, dtype=self.dtype,
                name='stem')(x.astype(self.dtype))
    x = act(layers.make_norm(self.norm, 'norm_stem', train=train)(x))
    for s, ch in enumerate(self.channels):
      for b in range(self.blocks_per_stage):
        strides = 2 if (s > 0 and b == 0 and min(x.shape[1:3]) >= 2) else 1
        x = ResidualBlock(ch, strides, self.norm, self.activation, self.dtype,
                          name=f'stage{s}_block{b}')(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(x)
    return self.output_scale * x.astype(jnp.float32)
