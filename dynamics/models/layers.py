"""Small building blocks shared by the models: norms, activations, inits."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ('layernorm', 'rmsnorm', 'batchnorm', 'none', 'dyt')
ACTIVATIONS = {
    'gelu': nn.gelu,
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'silu': nn.silu,
}


class DyT(nn.Module):
  """Dynamic Tanh: ``gamma * tanh(alpha * x) + beta`` (Zhu et al., 2025)."""
  alpha_init: float = 0.5

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(self.alpha_init), ())
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    return jnp.tanh(alpha * x) * scale + bias


class Identity(nn.Module):

  @nn.compact
  def __call__(self, x):
    return x


def make_norm(kind: str, name: str, *, train: bool = False,
              dtype=jnp.float32) -> nn.Module:
  """A normalization module; every name contains 'norm' (SAM-ON masks on it)."""
  if kind == 'layernorm':
    return nn.LayerNorm(name=name, dtype=dtype)
  if kind == 'rmsnorm':
    return nn.RMSNorm(name=name, dtype=dtype)
  if kind == 'batchnorm':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        name=name, dtype=dtype)
  if kind == 'dyt':
    return DyT(name=name)
  if kind == 'none':
    return Identity(name=name)
  raise ValueError(f'model.norm must be one of {NORMS}, got {kind!r}')


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(
        f'model.activation must be one of {tuple(ACTIVATIONS)}, got {name!r}')
  return ACTIVATIONS[name]
