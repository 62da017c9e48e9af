"""Multi-layer perceptron on flattened inputs."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dynamics.models import layers


class MLP(nn.Module):
  """``Dense -> act`` repeated, then a linear head scaled by ``output_scale``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    num_outputs: output dimension (classes or regression targets).
    activation: name in ``layers.ACTIVATIONS``.
    norm: normalization after each hidden Dense ('none' by default for MLPs).
    output_scale: the alpha of lazy-vs-rich studies; multiplies the output.
    use_bias: whether Dense layers carry a bias.
    layernorm_scaling: scale the output of hidden layer ``l``'s norm by
      ``1 / sqrt(l)`` (1-based).
    knobs: init / parametrization / quantization (``layers.Knobs``); the
      first Dense is muP's input layer, the head its output layer.
  """
  hidden_sizes: Sequence[int] = (64, 64)
  num_outputs: int = 10
  activation: str = 'relu'
  norm: str = 'none'
  output_scale: float = 1.0
  use_bias: bool = True
  layernorm_scaling: bool = False
  knobs: layers.Knobs = layers.Knobs()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for i, width in enumerate(self.hidden_sizes):
      role = 'input' if i == 0 else 'hidden'
      x = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype,
                   name=f'dense_{i}',
                   **self.knobs.linear(role, x.shape[-1]))(x)
      if self.norm != 'none':
        x = layers.make_norm(self.norm, f'norm_{i}', train=train)(x)
        x = layers.scaled(x, layers.depth_scale(self.layernorm_scaling, i + 1))
      x = act(x)
    x = nn.Dense(self.num_outputs, use_bias=self.use_bias, dtype=self.dtype,
                 name='head', **self.knobs.linear('output', x.shape[-1]))(x)
    return self.output_scale * x.astype(jnp.promote_types(x.dtype, jnp.float32))
