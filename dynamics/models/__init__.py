"""Flax Linen models. Each is used as a pure ``model.apply(variables, x)``.

`MODELS` is the registry: each model's name (``config.model.name``) maps to
its `Entry` -- how to build it, the kinds of data it takes, and what muP calls
its width and hidden matrices. `check` checks the ``config.model`` section.
"""

import dataclasses
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from dynamics import errors
from dynamics import quantization
from dynamics.models.cnn import CNN, ResNet, ResidualBlock
from dynamics.models.layers import (ACTIVATIONS, DyT, INITS, Knobs, MLPS,
                                    NORM_POSITIONS, NORMS, PARAMETRIZATIONS,
                                    POSITIONS, REMAT_POLICIES, apply_rope,
                                    knobs_from_config, make_norm,
                                    output_head, swiglu_hidden)
from dynamics.models.mlp import MLP
from dynamics.models.transformer import ATTENTION_IMPLS, Transformer

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One model of the registry.

  Attributes:
    build: ``(model_config, dataset_info, dtype, knobs) -> nn.Module``, with
      the ``layers.Knobs`` of its init / parametrization options.
    data: the kinds of data it takes (``dynamics.data.DATASETS[...].kind``).
    width: ``model_config -> int``, the width muP's ``base_width`` refers to.
    hidden_kernels: regex of the matrices whose fan-in and fan-out both grow
      with width (muP's hidden weights).
    residual: whether it has residual branches (for Fixup / ZerO init).
    own_fields: ``((field, default), ...)`` of ``config.model`` only this
      model reads; every other model needs them at their default.
    check: ``model_config -> None``, raising ``ConfigError`` for a value
      this model cannot take (None: nothing of its own to check).
  """
  build: Callable[[Any, Any, Any, Knobs], nn.Module]
  data: Tuple[str, ...]
  width: Callable[[Any], int]
  hidden_kernels: str
  residual: bool = False
  own_fields: Tuple[Tuple[str, Any], ...] = ()
  check: Optional[Callable[[Any], None]] = None


def _transformer(m, info, dtype, knobs):
  # ``model.vocab_size`` pads the embedding beyond the data's vocabulary
  # (checked by config validation).
  return Transformer(
      vocab_size=m.vocab_size or info.vocab_size, d_model=m.d_model,
      num_layers=m.num_layers, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      max_len=m.max_len, norm=m.norm, norm_position=m.norm_position,
      qk_norm=m.qk_norm, tie_embeddings=m.tie_embeddings, dropout=m.dropout,
      activation=m.activation, output_scale=m.output_scale,
      attention_impl=m.attention_impl, dtype=dtype,
      mix_ln_split=m.mix_ln_split, layernorm_scaling=m.layernorm_scaling,
      knobs=knobs, position=m.position,
      rope_theta=float(m.rope_theta), mlp=m.mlp, mlp_hidden=m.mlp_hidden,
      use_bias=m.use_bias, remat=m.remat)


def _mlp(m, info, dtype, knobs):
  return MLP(hidden_sizes=tuple(m.hidden_sizes), num_outputs=info.num_outputs,
             activation=m.activation, norm=m.norm,
             output_scale=m.output_scale, dtype=dtype,
             antisymmetric_init=m.antisymmetric_init,
             layernorm_scaling=m.layernorm_scaling,
             knobs=knobs)


def _cnn(m, info, dtype, knobs):
  return CNN(channels=tuple(m.channels), num_outputs=info.num_outputs,
             activation=m.activation, norm=m.norm,
             output_scale=m.output_scale, dtype=dtype,
             layernorm_scaling=m.layernorm_scaling,
             knobs=knobs)


def _resnet(m, info, dtype, knobs):
  return ResNet(channels=tuple(m.channels),
                blocks_per_stage=m.blocks_per_stage,
                num_outputs=info.num_outputs, activation=m.activation,
                norm=m.norm, output_scale=m.output_scale, dtype=dtype,
                layernorm_scaling=m.layernorm_scaling,
                knobs=knobs)


def _check_transformer(m):
  errors.require(m.d_model % m.num_heads == 0, 'model.num_heads', m.num_heads,
                 f'must divide model.d_model={m.d_model}')
  errors.require(m.norm != 'batchnorm', 'model.norm', m.norm,
                 'batchnorm is not supported by the transformer')
  head_dim = m.d_model // m.num_heads
  errors.require(m.position != 'rope' or head_dim % 2 == 0, 'model.position',
                 m.position, 'rope needs an even head dimension, not d_model '
                 f'/ num_heads = {head_dim}')


def _check_mlp(m):
  errors.require(not m.antisymmetric_init or (
      len(m.hidden_sizes) > 0 and m.hidden_sizes[-1] % 2 == 0),
                 'model.antisymmetric_init', m.antisymmetric_init,
                 'needs an even last hidden width, not hidden_sizes='
                 f'{m.hidden_sizes}')


MODELS = {
    'transformer': Entry(
        _transformer, ('language',), lambda m: int(m.d_model),
        r'block_\d+/(attn/(qkv|out)|mlp/(fc_in|fc_out))/kernel',
        residual=True,
        own_fields=(('qk_norm', False), ('norm_position', 'pre'),
                    ('position', 'learned'), ('mlp', 'gelu'),
                    ('remat', 'none'), ('use_bias', True),
                    ('vocab_size', None)),
        check=_check_transformer),
    'mlp': Entry(_mlp, ('vector', 'image'),
                 lambda m: int(m.hidden_sizes[0]), r'dense_[1-9]\d*/kernel',
                 own_fields=(('antisymmetric_init', False),),
                 check=_check_mlp),
    'cnn': Entry(_cnn, ('image',), lambda m: int(m.channels[0]),
                 r'conv_[1-9]\d*/kernel'),
    'resnet': Entry(_resnet, ('image',), lambda m: int(m.channels[0]),
                    r'stage\d+_block\d+/conv_(0|1|proj)/kernel',
                    residual=True),
}


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
  if m.name not in MODELS:
    raise ValueError(f'model.name must be one of {tuple(MODELS)}, '
                     f'got {m.name!r}')
  entry = MODELS[m.name]
  return entry.build(m, dataset_info, DTYPES[m.dtype],
                     knobs_from_config(m, entry.width(m)))


def cast_params(params: Any, param_dtype: str) -> Any:
  """``params`` with every floating leaf in ``param_dtype``
  (``config.model.param_dtype``): initialized in float32, then rounded, as
  GaLore's ``model.to(dtype=torch.bfloat16)``. The optimizer state, built
  from the parameters, follows (Adam's moments in bfloat16, as
  ``torch.optim.Adam`` on bfloat16 parameters).

  Example:
    >>> cast_params({'w': jnp.ones(2), 'i': jnp.arange(2)}, 'bfloat16')['w'].dtype
    dtype(bfloat16)
  """
  import jax  # pylint: disable=g-import-not-at-top
  dtype = DTYPES[param_dtype]
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(
      x.dtype, jnp.floating) else x, params)


def _cudnn_available() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() in ('gpu', 'cuda')


def _check_sizes(m: Any) -> None:
  for field in ('d_model', 'num_layers', 'num_heads', 'mlp_ratio', 'max_len',
                'blocks_per_stage'):
    errors.integer(f'model.{field}', m[field], 1)
  for field, minimum in (('hidden_sizes', 1), ('channels', 1)):
    values = m[field]
    ok = isinstance(values, (tuple, list)) and all(
        errors.is_int(v) and v >= minimum for v in values)
    errors.require(ok, f'model.{field}', values,
                   f'must be a tuple of integers >= {minimum}')
  errors.integer('model.mlp_hidden', m.mlp_hidden, 1, optional=True)
  errors.integer('model.vocab_size', m.vocab_size, 1, optional=True)


def check(config: Any) -> None:
  """Raises ``ConfigError`` for an invalid ``config.model`` field."""
  m = config.model
  errors.one_of('model.name', m.name, MODELS)
  _check_sizes(m)
  errors.one_of('model.norm', m.norm, NORMS)
  errors.one_of('model.norm_position', m.norm_position, NORM_POSITIONS)
  errors.one_of('model.dtype', m.dtype, DTYPES)
  errors.one_of('model.param_dtype', m.param_dtype, DTYPES)
  errors.one_of('model.activation', m.activation, ACTIVATIONS)
  errors.one_of('model.attention_impl', m.attention_impl,
                (None,) + ATTENTION_IMPLS)
  errors.require(m.attention_impl != 'cudnn' or _cudnn_available(),
                 'model.attention_impl', m.attention_impl,
                 'needs a CUDA GPU (cuDNN); this backend has none (use xla '
                 'or None)')
  errors.number('model.init_scale', m.init_scale, above=0)
  errors.number('model.output_scale', m.output_scale, above=0)
  errors.number('model.dropout', m.dropout, at_least=0, below=1)
  errors.number('model.rope_theta', m.rope_theta, above=0)
  errors.one_of('model.init', m.init, INITS)
  errors.one_of('model.parametrization', m.parametrization, PARAMETRIZATIONS)
  errors.one_of('model.quantization', m.quantization,
                (None,) + tuple(quantization.FORMATS))
  errors.one_of('model.position', m.position, POSITIONS)
  errors.one_of('model.mlp', m.mlp, MLPS)
  errors.one_of('model.remat', m.remat, REMAT_POLICIES)
  for field in ('qk_norm', 'tie_embeddings', 'layernorm_scaling',
                'antisymmetric_init', 'use_bias'):
    errors.boolean(f'model.{field}', m[field])
  if m.parametrization == 'mup':
    errors.integer('model.base_width', m.base_width, 1)
  else:
    errors.require(m.base_width is None, 'model.base_width', m.base_width,
                   'applies only to model.parametrization=mup, not '
                   f'{m.parametrization!r}')
  if m.mix_ln_split is not None:
    errors.require(m.norm_position == 'mix', 'model.mix_ln_split',
                   m.mix_ln_split, 'applies only to model.norm_position=mix, '
                   f'not {m.norm_position!r}')
    errors.require(0 <= m.mix_ln_split <= m.num_layers, 'model.mix_ln_split',
                   m.mix_ln_split,
                   f'must be in [0, model.num_layers={m.num_layers}]')
  errors.require(not m.layernorm_scaling or m.norm != 'none',
                 'model.layernorm_scaling', m.layernorm_scaling,
                 'needs a normalization (model.norm is none)')
  errors.require(m.init not in ('fixup', 'zero') or MODELS[m.name].residual,
                 'model.init', m.init, 'zero-initializes residual branches; '
                 f'model.name={m.name!r} has none (use '
                 f'{" or ".join(n for n, e in MODELS.items() if e.residual)})')
  for name, entry in MODELS.items():
    for field, default in entry.own_fields if name != m.name else ():
      errors.require(m[field] == default, f'model.{field}', m[field],
                     f'applies only to model.name={name}, not {m.name!r}')
  if MODELS[m.name].check is not None:
    MODELS[m.name].check(m)


__all__ = ['CNN', 'DTYPES', 'DyT', 'Entry', 'INITS', 'Knobs', 'MLP', 'MLPS',
           'MODELS', 'NORMS', 'NORM_POSITIONS', 'PARAMETRIZATIONS',
           'POSITIONS', 'REMAT_POLICIES', 'ResNet', 'ResidualBlock',
           'Transformer', 'apply_rope', 'build_model', 'cast_params', 'check',
           'knobs_from_config', 'make_norm', 'output_head', 'swiglu_hidden']
