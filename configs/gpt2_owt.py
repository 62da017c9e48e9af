"""GPT-2 small (124M) on OpenWebText with a WSD schedule.

Command (the data prepared once, below):
  python -m experiments.main --config=configs/gpt2_owt.py --config.data.path=data/owt_gpt2

Data: OpenWebText tokenized with GPT-2's byte-level BPE (vocabulary 50,257,
EOS ``<|endoftext|>`` = 50256)::

  python -m experiments.prepare_text --input='openwebtext/*.jsonl.gz' \\
      --tokenizer=gpt2/tokenizer.json --eval_tokens=10000000 --output=data/owt_gpt2

(the JSON-lines dump and GPT-2's ``tokenizer.json`` are yours to have on
disk; nothing is downloaded).

Model: GPT-2 small (Radford et al., 2019): 12 layers, width 768, 12 heads,
learned positions over 1,024 tokens, pre-LayerNorm, GELU MLP of 3,072,
biases, tied embeddings; the embedding is padded to 50,304 rows (a multiple
of 64, as nanoGPT does), bf16 compute. Optimization follows nanoGPT's
GPT-2 recipe (AdamW, learning rate 6e-4, betas (0.9, 0.95), weight decay
0.1 on matrices, clipping at 1.0) with a WSD schedule instead of its cosine:
700 warmup steps (~370M tokens, GPT-3 small's 375M), the peak held until the
last 20% of the steps, then a 1 - sqrt decay to 6e-5 (nanoGPT's floor).
Batch 512 sequences of 1,024 tokens (524,288 tokens per step) for 10,000
steps: 5.24B tokens, about twice Chinchilla's 20 tokens per parameter. Set
``--config.optimizer.grad_accum_steps=K`` to fit the batch in memory.

Time per step measured on the development machine (2-core x86 CPU shared
with other jobs, bf16, ``python -m experiments.bench_step --size=gpt2
--batch_size=1``): 40 s per sequence of 1,024 tokens, so ~5.7 h per
512-sequence step; this setting is for accelerators, and no GPU figure has
been measured (none was available).

Smoke variant (seconds, for tests; needs ``--config.data.path`` too):
``--config=configs/gpt2_owt.py:smoke``.
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  # eval_batches: 10.5M held-out tokens.
  c.update(
      name='gpt2_owt', num_steps=10_000, log_every=10, eval_every=500,
      eval_batches=20)
  m = c.model
  m.name = 'transformer'
  m.d_model, m.num_layers, m.num_heads, m.mlp_ratio = 768, 12, 12, 4
  m.max_len = 1024
  m.norm, m.norm_position, m.activation = 'layernorm', 'pre', 'gelu'
  m.tie_embeddings = True
  m.vocab_size = 50_304
  m.dtype = 'bfloat16'
  c.data.update(name='tokens', seq_len=1024, batch_size=512)
  o = c.optimizer
  o.name, o.learning_rate = 'adamw', 6e-4
  o.adamw.b1, o.adamw.b2, o.adamw.eps = 0.9, 0.95, 1e-8
  o.weight_decay, o.weight_decay_mask, o.clip_norm = 0.1, 'matrices', 1.0
  sc = c.schedule
  sc.name, sc.warmup_steps = 'wsd', 700
  sc.decay_fraction, sc.decay_shape, sc.final_value = 0.2, '1-sqrt', 6e-5
  c.checkpoint.every_steps = 500
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/gpt2_owt.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny GPT, a few steps: the real code path in seconds."""
  c.name += '_smoke'
  base.smoke(c, num_steps=8, log_every=2, eval_every=4, eval_batches=1,
             checkpoint_every=4)
  c.model.d_model, c.model.num_layers, c.model.num_heads = 32, 2, 2
  c.model.max_len = 16
  c.model.vocab_size = None        # The prepared data's vocabulary.
  c.data.seq_len = 16
  c.data.batch_size = 8
  c.schedule.warmup_steps = 2
  return c
