"""Flax Linen models. Each is used as a pure ``model.apply(variables, x)``."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dynamics.models.cnn import CNN, ResNet, ResidualBlock
from dynamics.models.layers import (DyT, INITS, Knobs, MLPS, NORM_POSITIONS,
                                    NORMS, PARAMETRIZATIONS, POSITIONS,
                                    REMAT_POLICIES, apply_rope,
                                    knobs_from_config, make_norm,
                                    swiglu_hidden)
from dynamics.models.mlp import MLP
from dynamics.models.transformer import Transformer

MODELS = ('transformer', 'mlp', 'cnn', 'resnet')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(model_config: Any, dataset_info: Any) -> nn.Module:
  """The model named by ``model_config.name``, sized for the dataset.

  Args:
    model_config: the ``config.model`` ConfigDict.
    dataset_info: a ``dynamics.data.DatasetInfo`` (vocab size, outputs, task).

  Returns:
    A Flax module called as ``module.apply(variables, inputs, train=...)``.
    The normalization, init and parametrization knobs of ``model_config`` are
    documented on the modules (``transformer.py``, ``layers.Knobs``); at
    their defaults every model is Flax's plain one.
  """
  m = model_config
  dtype = DTYPES[m.dtype]
  if m.name == 'transformer':
    # ``model.vocab_size`` pads the embedding beyond the data's vocabulary
    # (checked by config validation).
    return Transformer(
        vocab_size=m.vocab_size or dataset_info.vocab_size, d_model=m.d_model,
        num_layers=m.num_layers, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
        max_len=m.max_len, norm=m.norm, norm_position=m.norm_position,
        qk_norm=m.qk_norm, tie_embeddings=m.tie_embeddings, dropout=m.dropout,
        activation=m.activation, output_scale=m.output_scale,
        attention_impl=m.attention_impl, dtype=dtype,
        mix_ln_split=m.mix_ln_split, layernorm_scaling=m.layernorm_scaling,
        knobs=knobs_from_config(m, m.d_model), position=m.position,
        rope_theta=float(m.rope_theta), mlp=m.mlp, mlp_hidden=m.mlp_hidden,
        use_bias=m.use_bias, remat=m.remat)
  if m.name == 'mlp':
    return MLP(hidden_sizes=tuple(m.hidden_sizes),
               num_outputs=dataset_info.num_outputs, activation=m.activation,
               norm=m.norm, output_scale=m.output_scale, dtype=dtype,
               antisymmetric_init=m.antisymmetric_init,
               layernorm_scaling=m.layernorm_scaling,
               knobs=knobs_from_config(m, m.hidden_sizes[0]))
  if m.name == 'cnn':
    return CNN(channels=tuple(m.channels), num_outputs=dataset_info.num_outputs,
               activation=m.activation, norm=m.norm,
               output_scale=m.output_scale, dtype=dtype,
               layernorm_scaling=m.layernorm_scaling,
               knobs=knobs_from_config(m, m.channels[0]))
  if m.name == 'resnet':
    return ResNet(channels=tuple(m.channels),
                  blocks_per_stage=m.blocks_per_stage,
                  num_outputs=dataset_info.num_outputs, activation=m.activation,
                  norm=m.norm, output_scale=m.output_scale, dtype=dtype,
                  layernorm_scaling=m.layernorm_scaling,
                  knobs=knobs_from_config(m, m.channels[0]))
  raise ValueError(f'model.name must be one of {MODELS}, got {m.name!r}')


__all__ = ['CNN', 'DyT', 'INITS', 'Knobs', 'MLP', 'MLPS', 'MODELS', 'NORMS',
           'NORM_POSITIONS', 'PARAMETRIZATIONS', 'POSITIONS', 'REMAT_POLICIES',
           'ResNet', 'ResidualBlock', 'Transformer', 'apply_rope',
           'build_model', 'knobs_from_config', 'make_norm', 'swiglu_hidden']
