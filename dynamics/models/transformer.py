"""Decoder-only transformer language model (GPT-style).

Attention goes through ``jax.nn.dot_product_attention`` so that GPUs get the
fused (cuDNN flash) kernel when the shapes and dtype allow it.

Normalization placements (``norm_position``), for a sublayer ``f`` (attention
or MLP) with norm ``N``:

* ``pre``  (GPT-2): ``x + f(N(x))``, plus a final norm.
* ``post`` (Vaswani et al., 2017): ``N(x + f(x))``.
* ``peri`` (Kim et al., "Peri-LN: Revisiting Layer Normalization in the
  Transformer Architecture", 2025): ``x + N_out(f(N_in(x)))``, plus a final
  norm.
* ``mix`` (Li et al., "Mix-LN: Unleashing the Power of Deeper Layers by
  Combining Pre-LN and Post-LN", 2024): Post-LN in the first ``mix_ln_split``
  blocks (default ``num_layers // 4``), Pre-LN after, plus a final norm.
* ``deepnorm`` (Wang et al., "DeepNet: Scaling Transformers to 1,000
  Layers", 2022): ``N(alpha x + f(x))`` with ``alpha = (2 L)^(1/4)`` and the
  value / output / MLP projections initialized times ``beta = (8 L)^(-1/4)``
  (the paper's decoder-only constants; ``L = num_layers``).

``layernorm_scaling`` (Sun et al., "The Curse of Depth in Large Language
Models", 2025) multiplies every norm output inside block ``l`` (1-based) by
``1 / sqrt(l)``. ``qk_norm`` normalizes queries and keys per head (Dehghani
et al., 2023; Wortsman et al., 2023).

LLaMA-style options (Touvron et al., "LLaMA: Open and Efficient Foundation
Language Models", 2023), each independent of the others and of the options
above: ``position='rope'`` rotates queries and keys (after qk-norm, as
OLMo 2 does) instead of adding learned positions (`layers.apply_rope`);
``mlp='swiglu'`` is the gated ``W_out (silu(x W_gate) * x W_up)`` (Shazeer,
"GLU Variants Improve Transformer", 2020), its gate and up projections fused
in one ``fc_in`` kernel ``(d, 2 * hidden)`` so that every rule matching
``mlp/fc_in`` (muP, AdamP, per-layer metrics) applies unchanged;
``use_bias=False`` drops the biases of the linear layers and LayerNorms;
``remat`` rematerializes each block in the backward pass
(`layers.REMAT_POLICIES`). The GaLore / Stable-SPAM LLaMA is
``norm='rmsnorm', position='rope', mlp='swiglu', use_bias=False,
tie_embeddings=False``.

With ``Transformer.apply(..., mutable=['intermediates'])`` each block sows
the variance of the residual stream after it (``resid_var``) and the largest
causal attention logit ``max q.k * scale`` (``attn_logit_max``): the
stability probes of Wortsman et al., "Small-scale proxies for large-scale
Transformer training instabilities", 2023. Nothing is computed otherwise.
"""

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamics.models import layers

# ``config.model.attention_impl`` (None: XLA picks): the ``implementation`` of
# ``jax.nn.dot_product_attention``.
ATTENTION_IMPLS = ('xla', 'cudnn')


class Attention(nn.Module):
  num_heads: int
  qk_norm: bool = False
  norm: str = 'layernorm'
  attention_impl: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  knobs: layers.Knobs = layers.Knobs()
  num_branches: int = 1
  beta: float = 1.0
  scale: Optional[float] = None
  rope_theta: Optional[float] = None
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    d_model = x.shape[-1]
    head_dim = d_model // self.num_heads
    k_ = self.knobs
    # DeepNet scales only the value third of the fused qkv projection.
    columns = (2.0 / 3.0, self.beta) if self.beta != 1.0 else None
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                          name='qkv', use_bias=self.use_bias,
                          **k_.linear('hidden', d_model, branch_first=True,
                                      num_branches=self.num_branches,
                                      column_factors=columns))(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.qk_norm:
      qk_kind = 'rmsnorm' if self.norm in ('none', 'batchnorm') else self.norm
      q = layers.make_norm(qk_kind, 'q_norm', dtype=self.dtype)(q)
      k = layers.make_norm(qk_kind, 'k_norm', dtype=self.dtype)(k)
    if self.rope_theta is not None:
      q = layers.apply_rope(q, self.rope_theta)
      k = layers.apply_rope(k, self.rope_theta)
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', 'attn_logit_max',
               max_causal_logit(q, k, self.scale))
    extra = {} if self.scale is None else {'scale': self.scale}
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                     implementation=self.attention_impl,
                                     **extra)
    return nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype,
                           name='out', use_bias=self.use_bias,
                           **k_.linear('hidden', d_model, branch_last=True,
                                       extra_scale=self.beta))(y)


def max_causal_logit(q: jax.Array, k: jax.Array,
                     scale: Optional[float] = None) -> jax.Array:
  """``max_{b, h, t >= s} scale * q_t . k_s`` for ``(B, T, H, D)`` q and k."""
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum('bqhd,bkhd->bhqk', q.astype(jnp.float32),
                      k.astype(jnp.float32)) * scale
  t = q.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  return jnp.max(jnp.where(causal, logits, -jnp.inf))


class MlpBlock(nn.Module):
  """``fc_out(act(fc_in x))``; ``gated``: ``fc_out(act(x W_gate) * x W_up)``
  with ``[W_gate | W_up]`` the ``(d, 2 * hidden)`` kernel of ``fc_in``."""
  hidden: int
  activation: str = 'gelu'
  dtype: jnp.dtype = jnp.float32
  knobs: layers.Knobs = layers.Knobs()
  num_branches: int = 1
  beta: float = 1.0
  gated: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    d_model = x.shape[-1]
    width = 2 * self.hidden if self.gated else self.hidden
    h = nn.Dense(width, dtype=self.dtype, name='fc_in', use_bias=self.use_bias,
                 **self.knobs.linear('hidden', d_model, branch_first=True,
                                     num_branches=self.num_branches,
                                     extra_scale=self.beta))(x)
    if self.gated:
      gate, up = jnp.split(h, 2, axis=-1)
      h = layers.activation(self.activation)(gate) * up
    else:
      h = layers.activation(self.activation)(h)
    return nn.Dense(d_model, dtype=self.dtype, name='fc_out',
                    use_bias=self.use_bias,
                    **self.knobs.linear('hidden', self.hidden,
                                        branch_last=True,
                                        extra_scale=self.beta))(h)


class Block(nn.Module):
  """One transformer block; ``norm_position`` is 'pre' | 'post' | 'peri' |
  'deepnorm' (the Transformer resolves 'mix' into 'post' / 'pre' per block).

  ``norm_scale`` multiplies every norm output (LayerNorm Scaling) and
  ``alpha`` the residual in DeepNorm.
  """
  num_heads: int
  mlp_hidden: int
  norm: str = 'layernorm'
  norm_position: str = 'pre'
  qk_norm: bool = False
  dropout: float = 0.0
  activation: str = 'gelu'
  attention_impl: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  knobs: layers.Knobs = layers.Knobs()
  num_branches: int = 1
  norm_scale: float = 1.0
  alpha: float = 1.0
  beta: float = 1.0
  attn_scale: Optional[float] = None
  rope_theta: Optional[float] = None
  gated_mlp: bool = False
  use_bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    attn = Attention(self.num_heads, self.qk_norm, self.norm,
                     self.attention_impl, self.dtype, self.knobs,
                     self.num_branches, self.beta, self.attn_scale,
                     self.rope_theta, self.use_bias, name='attn')
    mlp = MlpBlock(self.mlp_hidden, self.activation, self.dtype, self.knobs,
                   self.num_branches, self.beta, self.gated_mlp, self.use_bias,
                   name='mlp')
    drop = nn.Dropout(self.dropout, deterministic=not train)

    def norm(name):
      module = layers.make_norm(self.norm, name, dtype=self.dtype,
                                use_bias=self.use_bias)
      return lambda h: layers.scaled(module(h), self.norm_scale)

    norm_attn, norm_mlp = norm('norm_attn'), norm('norm_mlp')
    if self.norm_position == 'pre':
      x = x + drop(attn(norm_attn(x)))
      x = x + drop(mlp(norm_mlp(x)))
    elif self.norm_position == 'post':
      x = norm_attn(x + drop(attn(x)))
      x = norm_mlp(x + drop(mlp(x)))
    elif self.norm_position == 'peri':
      norm_attn_out, norm_mlp_out = norm('norm_attn_out'), norm('norm_mlp_out')
      x = x + drop(norm_attn_out(attn(norm_attn(x))))
      x = x + drop(norm_mlp_out(mlp(norm_mlp(x))))
    elif self.norm_position == 'deepnorm':
      x = norm_attn(self.alpha * x + drop(attn(x)))
      x = norm_mlp(self.alpha * x + drop(mlp(x)))
    else:
      raise ValueError(
          f'model.norm_position={self.norm_position!r} is not supported')
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', 'resid_var', jnp.var(x.astype(jnp.float32)))
    return x


class Transformer(nn.Module):
  """Decoder-only transformer: tokens ``(B, T)`` int -> logits ``(B, T, V)``.

  Attributes:
    vocab_size: number of tokens.
    d_model, num_layers, num_heads, mlp_ratio: the usual sizes.
    max_len: maximum sequence length (learned position embeddings).
    position: 'learned' (a ``(max_len, d)`` table) | 'rope' (rotary).
    rope_theta: RoPE's base period.
    mlp: 'gelu' (``fc_out(act(fc_in x))`` with ``activation``) | 'swiglu'.
    mlp_hidden: the MLP's hidden size (None: ``mlp_ratio * d_model``, or
      `layers.swiglu_hidden` for SwiGLU).
    use_bias: biases in the linear layers and LayerNorms.
    remat: 'none' | 'full' | 'dots': rematerialize each block
      (`layers.REMAT_POLICIES`).
    norm: 'layernorm' | 'rmsnorm' | 'dyt' | 'none'.
    norm_position: 'pre' | 'post' | 'peri' | 'mix' | 'deepnorm' (module doc).
    mix_ln_split: Mix-LN's number of leading Post-LN blocks (None:
      ``num_layers // 4``).
    qk_norm: normalize queries and keys per head before the dot product.
    layernorm_scaling: scale norm outputs in block ``l`` by ``1/sqrt(l)``.
    tie_embeddings: output head is the transposed token embedding.
    output_scale: multiplies the logits (lazy-vs-rich alpha).
    knobs: init / parametrization / quantization (``layers.Knobs``). Under
      muP the attention uses ``1/d_head`` scaling (``sqrt(base_d_head) /
      d_head``) and the logits are multiplied by ``1 / width_mult``.
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
  mix_ln_split: Optional[int] = None
  layernorm_scaling: bool = False
  knobs: layers.Knobs = layers.Knobs()
  position: str = 'learned'
  rope_theta: float = 10_000.0
  mlp: str = 'gelu'
  mlp_hidden: Optional[int] = None
  use_bias: bool = True
  remat: str = 'none'

  def hidden_size(self) -> int:
    """The MLP's hidden size (see ``mlp_hidden``)."""
    if self.mlp_hidden is not None:
      return self.mlp_hidden
    if self.mlp == 'swiglu':
      return layers.swiglu_hidden(self.d_model)
    return self.mlp_ratio * self.d_model

  def block_positions(self):
    """Each block's norm placement ('mix' resolved into 'post' then 'pre')."""
    if self.norm_position != 'mix':
      return (self.norm_position,) * self.num_layers
    split = (self.num_layers // 4 if self.mix_ln_split is None
             else self.mix_ln_split)
    return tuple('post' if i < split else 'pre' for i in range(self.num_layers))

  def readout(self, params) -> Tuple[jax.Array, Optional[jax.Array], float,
                                     jnp.dtype]:
    """The output head as ``(W (d, V), b (V,) or None, scale, dtype)``:
    ``logits = scale * (h.astype(dtype) @ W + b)`` for the hidden states
    ``h`` that ``__call__(..., return_hidden=True)`` returns (what the
    chunked cross-entropy, `dynamics.chunked_loss`, needs)."""
    mult = 1.0
    if self.knobs.parametrization == 'mup':
      mult = 1.0 / self.knobs.width_mult
    elif self.knobs.parametrization == 'ntk' and not self.tie_embeddings:
      mult = 1.0 / math.sqrt(self.d_model)
    if self.knobs.quantization is not None:
      raise ValueError('the chunked cross-entropy does not fake-quantize '
                       'the head: model.quantization must be None')
    if self.tie_embeddings:
      return (params['embed']['embedding'].T, None,
              self.output_scale * mult, jnp.float32)
    head, bias = params['head'], params['head'].get('bias')
    # The parametrization's multiplier scales ``h W`` only, not the bias.
    if bias is not None and mult != 1.0:
      bias = bias / mult
    return head['kernel'], bias, self.output_scale * mult, self.dtype

  @nn.compact
  def __call__(self, tokens, train: bool = False, return_hidden: bool = False):
    _, seq_len = tokens.shape
    embed = nn.Embed(self.vocab_size, self.d_model,
                     embedding_init=nn.initializers.normal(0.02),
                     name='embed')
    x = embed(tokens)
    if self.position == 'learned':
      pos = self.param('pos_embed', nn.initializers.normal(0.02),
                       (self.max_len, self.d_model))
      x = x + pos[None, :seq_len]
    elif self.position != 'rope':
      raise ValueError(f'model.position must be one of {layers.POSITIONS}, '
                       f'got {self.position!r}')
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.astype(self.dtype)
    positions = self.block_positions()
    extra = {}
    if self.norm_position == 'deepnorm':
      extra['alpha'] = (2.0 * self.num_layers) ** 0.25
      extra['beta'] = (8.0 * self.num_layers) ** -0.25
    mup = self.knobs.parametrization == 'mup'
    if mup:
      head_dim = self.d_model // self.num_heads
      extra['attn_scale'] = (math.sqrt(head_dim / self.knobs.width_mult)
                             / head_dim)
    if self.position == 'rope':
      extra['rope_theta'] = self.rope_theta
    if self.mlp not in layers.MLPS:
      raise ValueError(f'model.mlp must be one of {layers.MLPS}, '
                       f'got {self.mlp!r}')
    gated = self.mlp == 'swiglu'
    block = Block
    if self.remat != 'none':  # ``train`` (argument 2, self is 0) is static.
      block = nn.remat(Block, policy=layers.REMAT_POLICIES[self.remat],
                       static_argnums=(2,))
    for i in range(self.num_layers):
      x = block(self.num_heads, self.hidden_size(), self.norm,
                positions[i], self.qk_norm, self.dropout,
                'silu' if gated else self.activation, self.attention_impl,
                self.dtype, self.knobs, 2 * self.num_layers,
                layers.depth_scale(self.layernorm_scaling, i + 1),
                gated_mlp=gated, use_bias=self.use_bias,
                name=f'block_{i}', **extra)(x, train)
    if positions[-1] in ('pre', 'peri'):
      x = layers.make_norm(self.norm, 'norm_final', dtype=self.dtype,
                           use_bias=self.use_bias)(x)
    if return_hidden:  # The head is applied by the loss (`readout`).
      return x
    if self.tie_embeddings:
      logits = embed.attend(x.astype(jnp.float32))
      if mup:
        logits = logits / self.knobs.width_mult
    else:
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='head',
                        use_bias=self.use_bias,
                        **self.knobs.linear('output', self.d_model))(x)
    return self.output_scale * logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
