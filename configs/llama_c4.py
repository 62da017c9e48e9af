"""LLaMA-style models pre-trained on C4: the GaLore / Stable-SPAM settings.

Command (LLaMA-60M, Adam, cosine; the data prepared once, below):
  python -m experiments.main --config=configs/llama_c4.py:60m --config.data.path=data/c4_t5

Variants, comma-separated (``:130m,stable_spam,wsd``): a size ``60m`` |
``130m`` | ``350m`` | ``1b``; an optimizer recipe ``adam`` (default) |
``stable_spam``; a schedule ``cosine`` (default) | ``wsd``; a data and
precision recipe ``packed`` (default) | ``galore``; ``smoke``.

Which recipe, and what its perplexity compares with:

* ``packed`` (default; this project's): float32 parameters and optimizer
  state, bf16 compute; documents concatenated and cut into 256-token
  windows across their boundaries (``data.packing='concat'``), every token a
  target. Its eval perplexity is per token of packed text: tokens late in a
  window see context from the previous document, and no padding is
  predicted. It is *not* the number of GaLore's / Stable-SPAM's tables;
  compare it with other packed runs (nanoGPT-style) only.
* ``galore`` (the papers' recipe exactly): weights and Adam states in
  bfloat16 (``model.param_dtype='bfloat16'``: GaLore's
  ``model.to(dtype=torch.bfloat16)``; the optimizer state follows the
  parameters' dtype) and each C4 document truncated/padded to 256 tokens
  (``data.packing='truncate'``: HF ``max_length=256, truncation=True,
  padding='max_length'``, padding and the last position masked out of the
  loss, as the labels' -100). Its eval perplexity, ``exp`` of the mean
  cross-entropy over the unmasked tokens of the eval documents, is the
  quantity of GaLore's Table 2 and Stable-SPAM's tables (their validation
  loop averages the batch losses of 10M eval tokens; the per-batch mean
  here weighs tokens equally -- the same up to how padding splits across
  batches). The C4 files must be prepared with the EOS id that ends each
  document (``prepare_text`` writes it).

Data: C4 (en) tokenized with the T5 tokenizer (vocabulary 32,000, as in
GaLore and Stable-SPAM; the 100 sentinel ids above it never occur in text)::

  python -m experiments.prepare_text --input='c4/en/c4-train.00*-of-01024.json.gz' \\
      --eval_input='c4/en/c4-validation.00000-of-00008.json.gz' \\
      --eval_tokens=10000000 --tokenizer=t5/tokenizer.json --output=data/c4_t5

(the ``c4/en`` JSON-lines files and the T5 ``tokenizer.json`` are yours to
have on disk; nothing is downloaded). Any other token directory works too:
``model.vocab_size`` must then cover its ids (``None`` takes its vocabulary).

Models (Zhao et al., "GaLore", 2024, Table/configs; Huang et al.,
"Stable-SPAM", 2025): pre-norm RMSNorm, rotary positions, SwiGLU MLP, no
biases, untied input and output embeddings, bf16 compute with float32
parameters; sequence 256, batch 512 sequences (131,072 tokens per step).

=====  ======  ======  =====  =======  =======  =========================
size   d       layers  heads  SwiGLU   steps    tokens trained on
=====  ======  ======  =====  =======  =======  =========================
60m    512     8       8      1,376    10,000   1.31B
130m   768     12      12     2,048    20,000   2.62B
350m   1,024   24      16     2,736    60,000   7.86B
1b     2,048   24      32     5,461    100,000  13.1B
=====  ======  ======  =====  =======  =======  =========================

Recipes: ``adam``: Adam (0.9, 0.999), learning rate 1e-3, no weight decay,
no clipping: GaLore's training script run with ``--optimizer adam --lr
0.001`` (its released shell scripts show only the GaLore runs, at 0.01; the
full-rank rate here is the one its re-runs use and is not tuned here). ``stable_spam``:
the released Stable-SPAM scripts' settings: learning rate 4e-4, gamma1 0.7,
gamma2 0.9, theta 0.999, momentum reset every 500 steps. Schedules:
``cosine`` warms up over the first 10% of steps and decays to 10% of the
peak (``min_lr_ratio=0.1`` of the papers' code); ``wsd`` keeps the same
warmup and floor but holds the peak until the last 20% of the steps and
decays along 1 - sqrt (Hägele et al., 2024), so the two differ only in
shape. One difference from the PyTorch reference: weights start from
Flax's LeCun normal (std 1/sqrt(fan_in)), not N(0, 0.02).

Memory: ``--config.optimizer.grad_accum_steps=K`` keeps the update of the
512-sequence batch with the activations of 512/K (the GaLore scripts use
256 x 2 on one A100 for 60M); ``--config.model.remat=dots`` trades compute
for activation memory; ``--config.mesh.fsdp=N`` shards the parameters.

Time per step measured on the development machine (2-core x86 CPU shared
with other jobs, bf16, ``python -m experiments.bench_step --size=llama60m``
etc.): 60m 7.4 s per 2 sequences (the 512-sequence step ~32 min), 130m
13.3 s per sequence (~1.9 h), 350m 54 s per sequence (~7.7 h); 1b does not
fit in its 24 GB. These settings are for accelerators; no GPU figure has been
measured (none was available): one H100 at 40% MFU would take ~0.09 s per
60m step (``python -m experiments.bench_data`` prints the rates).

Smoke variant (seconds, for tests; needs ``--config.data.path`` too):
``--config=configs/llama_c4.py:smoke``.
"""

import ml_collections

from configs import base
from configs import gpt2_owt

# d_model, num_layers, num_heads, SwiGLU hidden, steps.
SIZES = {
    '60m': (512, 8, 8, 1376, 10_000),
    '130m': (768, 12, 12, 2048, 20_000),
    '350m': (1024, 24, 16, 2736, 60_000),
    '1b': (2048, 24, 32, 5461, 100_000),
}


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  # eval_batches: 2.6M held-out tokens.
  c.update(name='llama_c4', log_every=10, eval_every=1000, eval_batches=20)
  m = c.model
  m.name = 'transformer'
  m.norm = 'rmsnorm'
  m.norm_position = 'pre'
  m.position = 'rope'
  m.mlp = 'swiglu'
  m.use_bias = False
  m.tie_embeddings = False
  m.vocab_size = 32_000
  m.max_len = 256
  m.dtype = 'bfloat16'
  c.data.update(name='tokens', seq_len=256, batch_size=512)
  c.checkpoint.every_steps = 1000
  size(c, '60m')
  adam(c)
  cosine(c)
  variants = {'adam': adam, 'stable_spam': stable_spam, 'cosine': cosine,
              'wsd': wsd, 'packed': packed, 'galore': galore, 'smoke': smoke}
  for name in SIZES:
    variants[name] = lambda c, name=name: size(c, name)
  return base.apply_variants(c, arg, variants, 'configs/llama_c4.py')


def size(c: ml_collections.ConfigDict, name: str) -> None:
  """One of the four model sizes, with its number of steps."""
  d, layers, heads, hidden, steps = SIZES[name]
  rest = c.name.split('_', 3)[3:]  # Recipe suffixes already applied.
  c.name = '_'.join([f'llama_c4_{name}'] + rest)
  c.model.d_model, c.model.num_layers, c.model.num_heads = d, layers, heads
  c.model.mlp_hidden = hidden
  c.num_steps = steps
  _warmup(c)


def _warmup(c: ml_collections.ConfigDict) -> None:
  c.schedule.warmup_steps = c.num_steps // 10
  c.schedule.final_value = 0.1 * c.optimizer.learning_rate


def adam(c: ml_collections.ConfigDict) -> None:
  """GaLore's full-rank baseline: Adam, no weight decay, no clipping."""
  o = c.optimizer
  o.name, o.learning_rate = 'adam', 1e-3
  o.adam.b1, o.adam.b2 = 0.9, 0.999
  o.weight_decay, o.clip_norm = 0.0, None
  _warmup(c)


def stable_spam(c: ml_collections.ConfigDict) -> None:
  """Stable-SPAM with its released scripts' hyperparameters."""
  o = c.optimizer
  o.name, o.learning_rate = 'stable_spam', 4e-4
  s = o.stable_spam
  s.b1, s.b2, s.gamma1, s.gamma2, s.theta = 0.9, 0.999, 0.7, 0.9, 0.999
  s.reset_interval = 500
  o.weight_decay, o.clip_norm = 0.0, None
  c.name += '_stable_spam'
  _warmup(c)


def packed(c: ml_collections.ConfigDict) -> None:
  """This project's recipe (the default): float32 parameters and optimizer
  state, documents packed across boundaries (module doc)."""
  c.model.param_dtype = 'float32'
  c.data.packing = 'concat'


def galore(c: ml_collections.ConfigDict) -> None:
  """GaLore's recipe exactly: bfloat16 weights and Adam states, each
  document truncated/padded to the sequence length, padding masked."""
  c.model.param_dtype = 'bfloat16'
  c.data.packing = 'truncate'
  c.name += '_galore_recipe'


def cosine(c: ml_collections.ConfigDict) -> None:
  c.schedule.name = 'cosine'


def wsd(c: ml_collections.ConfigDict) -> None:
  """Warmup-stable-decay: the last 20% decays along 1 - sqrt."""
  c.schedule.update(name='wsd', decay_fraction=0.2, decay_shape='1-sqrt')
  c.name += '_wsd'


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny LLaMA, a few steps: GPT-2's smoke shapes with a SwiGLU MLP."""
  c = gpt2_owt.smoke(c)
  c.model.mlp_hidden = 64
  return c
