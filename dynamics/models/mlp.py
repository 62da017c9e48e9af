"""Multi-layer perceptron on flattened inputs."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamics.models import layers


def paired_init(base: layers.Initializer, axis: int, sign: float
                ) -> layers.Initializer:
  """``base`` for the first half along ``axis``, repeated times ``sign``.

  Draws ``base(key, shape)`` at the full shape (so a fan-in-scaled init keeps
  its variance) and keeps its first half along ``axis``; the second half is
  ``sign`` times that half. ``sign=1`` on a hidden kernel's output axis makes
  units ``j`` and ``j + h/2`` identical; ``sign=-1`` on the readout's input
  axis gives them opposite readouts, so their contributions cancel.

  Example:
    >>> init = paired_init(nn.initializers.lecun_normal(), axis=0, sign=-1.0)
    >>> w = init(jax.random.PRNGKey(0), (4, 1))
    >>> bool(jnp.all(w[2:] == -w[:2]))
    True
  """

  def init(key, shape, dtype=jnp.float32):
    if shape[axis] % 2:
      raise ValueError(f'paired init needs an even size along axis {axis}, '
                       f'got shape {shape}')
    half = jax.lax.slice_in_dim(base(key, shape, dtype), 0, shape[axis] // 2,
                                axis=axis)
    return jnp.concatenate([half, sign * half], axis=axis)

  return init


class MLP(nn.Module):
  """``Dense -> act`` repeated, then a linear head scaled by ``output_scale``.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    num_outputs: output dimension (classes or regression targets).
    activation: name in ``layers.ACTIVATIONS``.
    norm: normalization after each hidden Dense ('none' by default for MLPs).
    output_scale: the alpha of lazy-vs-rich studies; multiplies the output.
    antisymmetric_init: the output is exactly 0 at initialization, by the
      symmetrized initialization of Chizat, Oyallon & Bach ("On Lazy Training
      in Differentiable Programming", 2019): the last hidden layer's units
      ``j`` and ``j + h/2`` start identical and the readout weighs them with
      opposite signs. Then ``output_scale * g(x; theta)`` *is* their centered
      model ``alpha (g(x; theta) - g(x; theta_0))`` at init, for any alpha,
      without storing ``theta_0``; the pairs train independently afterwards.
      Needs an even last hidden width; the head's bias starts at 0 as usual.
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
  antisymmetric_init: bool = False
  use_bias: bool = True
  layernorm_scaling: bool = False
  knobs: layers.Knobs = layers.Knobs()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = layers.activation(self.activation)
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    last = len(self.hidden_sizes) - 1
    for i, width in enumerate(self.hidden_sizes):
      role = 'input' if i == 0 else 'hidden'
      kwargs = self.knobs.linear(role, x.shape[-1])
      if self.antisymmetric_init and i == last:
        kwargs = self._paired(kwargs, axis=1, sign=1.0)
      x = nn.Dense(width, use_bias=self.use_bias, dtype=self.dtype,
                   name=f'dense_{i}', **kwargs)(x)
      if self.norm != 'none':
        x = layers.make_norm(self.norm, f'norm_{i}', train=train)(x)
        x = layers.scaled(x, layers.depth_scale(self.layernorm_scaling, i + 1))
      x = act(x)
    paired = None
    if self.antisymmetric_init:
      if last < 0:
        raise ValueError('antisymmetric_init needs a hidden layer')
      paired = lambda kwargs: self._paired(kwargs, axis=0, sign=-1.0)
    return layers.output_head(x, self.num_outputs, self.knobs,
                              dtype=self.dtype, output_scale=self.output_scale,
                              use_bias=self.use_bias, init=paired)

  @staticmethod
  def _paired(kwargs, axis: int, sign: float):
    """``kwargs`` of ``Knobs.linear`` with their kernel init paired."""
    base = kwargs.get('kernel_init', nn.initializers.lecun_normal())
    return {**kwargs, 'kernel_init': paired_init(base, axis, sign)}
