"""Decoder-only transformer language model (GPT-style).

Attention goes through ``jax.nn.dot_product_attention`` so that GPUs get the
fused (cuDNN flash) kernel when the shapes and dtype allow it.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamics.models import layers


class Attention(nn.Module):
  num_heads: int
  qk_norm: bool = False
  norm: str = 'layernorm'
  attention_impl: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d_model = x.shape[-1]
    head_dim = d_model // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                          name='qkv')(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.qk_norm:
      qk_kind = 'rmsnorm' if self.norm in ('none', 'batchnorm') else self.norm
      q = layers.make_norm(qk_kind, 'q_norm', dtype=self.dtype)(q)
      k = layers.make_norm(qk_kind, 'k_norm', dtype=self.dtype)(k)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                     implementation=self.attention_impl)
    return nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype,
                           name='out')(y)


class MlpBlock(nn.Module):
  hidden: int
  activation: str = 'gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d_model = x.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, name='fc_in')(x)
    h = layers.activation(self.activation)(h)
    return nn.Dense(d_model, dtype=self.dtype, name='fc_out')(h)


class Block(nn.Module):
  """One transformer block; ``norm_position`` picks pre-LN or post-LN."""
  num_heads: int
  mlp_hidden: int
  norm: str = 'layernorm'
  norm_position: str = 'pre'
  qk_norm: bool = False
  dropout: float = 0.0
  activation: str = 'gelu'
  attention_impl: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    attn = Attention(self.num_heads, self.qk_norm, self.norm,
                     self.attention_impl, self.dtype, name='attn')
    mlp = MlpBlock(self.mlp_hidden, self.activation, self.dtype, name='mlp')
    drop = nn.Dropout(self.dropout, deterministic=not train)
    norm_attn = layers.make_norm(self.norm, 'norm_attn', dtype=self.dtype)
    norm_mlp = layers.make_norm(self.norm, 'norm_mlp', dtype=self.dtype)
    if self.norm_position == 'pre':
      x = x + drop(attn(norm_attn(x)))
      x = x + drop(mlp(norm_mlp(x)))
    elif self.norm_position == 'post':
      x = norm_attn(x + drop(attn(x)))
      x = norm_mlp(x + drop(mlp(x)))
    else:
      raise ValueError(
          f'model.norm_position={self.norm_position!r} is not supported')
    return x


class Transformer(nn.Module):
  """Decoder-only transformer: tokens ``(B, T)`` int -> logits ``(B, T, V)``.

  Attributes:
    vocab_size: number of tokens.
    d_model, num_layers, num_heads, mlp_ratio: the usual sizes.
    max_len: maximum sequence length (learned position embeddings).
    norm: 'layernorm' | 'rmsnorm' | 'dyt' | 'none'.
    norm_position: 'pre' (GPT-2) or 'post' (original transformer).
    qk_norm: normalize queries and keys per head before the dot product.
    tie_embeddings: output head is the transposed token embedding.
    output_scale: multiplies the logits (lazy-vs-rich alpha).
    dtype: compute dtype (parameters stay float32).
  """
  vocab_size: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 128
  norm: str = 'layernorm'
  norm_position: str = 'pre'
  qk_norm: bool = False
  tie_embeddings: bool = True
  dropout: float = 0.0
  activation: str = 'gelu'
  output_scale: float = 1.0
  attention_impl: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    _, seq_len = tokens.shape
    embed = nn.Embed(self.vocab_size, self.d_model,
                     embedding_init=nn.initializers.normal(0.02),
                     name='embed')
    pos = self.param('pos_embed', nn.initializers.normal(0.02),
                     (self.max_len, self.d_model))
    x = embed(tokens) + pos[:seq_len]
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.astype(self.dtype)
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.mlp_ratio * self.d_model, self.norm,
                self.norm_position, self.qk_norm, self.dropout,
                self.activation, self.attention_impl, self.dtype,
                name=f'block_{i}')(x, train=train)
    if self.norm_position == 'pre':
      x = layers.make_norm(self.norm, 'norm_final', dtype=self.dtype)(x)
    if self.tie_embeddings:
      logits = embed.attend(x.astype(jnp.float32))
    else:
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='head')(x)
    return self.output_scale * logits.astype(jnp.float32)
