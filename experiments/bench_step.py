r"""Benchmark: the project's ``train_step`` against a hand-written optax step.

  python -m experiments.bench_step                 # CPU smoke transformer
  python -m experiments.bench_step --size=gpt2     # ~124M params, bf16 (GPU)
  python -m experiments.bench_step --size=llama60m --batch_size=4 --baseline=false

``--size=llama60m|llama130m|llama350m|llama1b`` times the LLaMA-C4 shapes of
``configs/llama_c4.py`` (bf16, sequence 256, synthetic token shards; on a CPU
use a small ``--batch_size``: the time of the configs' 512-sequence step is
extrapolated linearly and printed too), with tokens/s and model-FLOPs
utilization (`dynamics.throughput`; ``--peak_flops`` for devices without a
table entry, such as CPUs).

Both steps train the same model on the same batch with ``optax.adamw`` and the
same schedule; the baseline is the minimal ``jax.jit(value_and_grad + update +
apply_updates)`` with the state donated. Timing interleaves the two (after
compiling and warming both), takes the median of ``--repeats`` rounds of
``--steps`` steps each, and prints the ratio (target <= 1.05).
"""

import functools
import statistics
import tempfile

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from configs import llama_c4, wsd
from dynamics import outputs, runs, throughput, timing
from dynamics.data import tokens as tokens_lib

LLAMA = ('llama60m', 'llama130m', 'llama350m', 'llama1b')
_SIZE = flags.DEFINE_enum('size', 'smoke', ['smoke', 'wsd', 'gpt2', *LLAMA],
                          'Model size.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Sequences per step '
                              '(default: the size\'s own).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'],
                           'Compute dtype (default: the size\'s own).')
_BASELINE = flags.DEFINE_bool('baseline', True, 'Also time the hand-written '
                              'optax step.')
_PEAK = flags.DEFINE_float('peak_flops', None, 'Peak FLOP/s per device for '
                           'MFU (default: dynamics.throughput.PEAK_FLOPS).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed rounds per step function.')
_RESULTS = flags.DEFINE_string('results', None, 'Also write the figures as '
                               'JSON here (with versions and provenance).')


def bench_config(size: str, token_dir: str = None):
  if size in LLAMA:
    c = llama_c4.get_config(size[len('llama'):])
    c.data.path = token_dir
    c.model.vocab_size = 32_000
    return c
  c = wsd.get_config('smoke' if size == 'smoke' else None)
  c.optimizer.clip_norm = None
  c.optimizer.weight_decay_mask = 'all'
  if size == 'gpt2':  # Token files: a Markov chain over 50k states is 20 GB.
    c.model.d_model, c.model.num_layers, c.model.num_heads = 768, 12, 12
    c.model.max_len = c.data.seq_len = 1024
    c.data.name, c.data.path, c.data.batch_size = 'tokens', token_dir, 16
    c.model.vocab_size = 50304
    c.model.dtype = 'bfloat16'
  return c


def baseline_step(model, tx):
  """The minimal hand-written step a researcher would write."""

  def loss_fn(params, batch):
    logits = model.apply({'params': params}, batch['inputs'])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['targets']).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def main(argv):
  del argv
  # The token files live as long as the run reads them (it builds its dataset
  # lazily, at run.parts).
  with tempfile.TemporaryDirectory() as tmp:
    _main(tmp)


def _main(tmp):
  token_dir = None
  if _SIZE.value in LLAMA + ('gpt2',):
    token_dir = tokens_lib.write_synthetic(
        tmp, 2_000_000, vocab=50_257 if _SIZE.value == 'gpt2' else 32_000)
  config = bench_config(_SIZE.value, token_dir)
  if _BATCH.value:
    config.data.batch_size = _BATCH.value
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  run = runs.Run(config)
  full_batch = bench_config(_SIZE.value, token_dir).data.batch_size
  parts = run.parts
  state = run.init_state()
  batch = jax.tree.map(jnp.asarray, parts.dataset.train_batch(0))
  ours = run.train_step
  base = baseline_step(parts.model, parts.tx)
  params = jax.tree.map(jnp.copy, state.params)
  opt_state = parts.tx.init(params)
  holder = {'state': state, 'params': params, 'opt': opt_state}

  def round_ours():
    s = holder['state']
    for _ in range(_STEPS.value):
      s, m = ours(s, batch)
    jax.block_until_ready(m['loss'])
    holder['state'] = s

  def round_base():
    p, o = holder['params'], holder['opt']
    for _ in range(_STEPS.value):
      p, o, loss = base(p, o, batch)
    jax.block_until_ready(loss)
    holder['params'], holder['opt'] = p, o

  rounds = (round_ours, round_base) if _BASELINE.value else (round_ours,)
  for fn in rounds:  # Compile and warm up.
    fn()
  t_ours, t_base = [], []
  for _ in range(_REPEATS.value):     # Interleaved, so drift hits both.
    t_ours += timing.call_seconds(round_ours, repeats=1, warmup=0)
    if _BASELINE.value:
      t_base += timing.call_seconds(round_base, repeats=1, warmup=0)
  per_ours = statistics.median(t_ours) / _STEPS.value
  n_params = sum(x.size for x in jax.tree.leaves(params))
  tokens = config.data.batch_size * config.data.seq_len
  kind = jax.devices()[0].device_kind
  print(f'device: {kind} x{jax.device_count()}; model: {n_params:,} params, '
        f'{config.model.dtype}, {tokens} tokens/step')
  print(f'{"step":<34}{"ms/step":>10}{"tokens/s":>12}')
  if _BASELINE.value:
    per_base = statistics.median(t_base) / _STEPS.value
    print(f'{"optax.adamw hand-written":<34}{1e3 * per_base:>10.2f}'
          f'{tokens / per_base:>12.4g}')
  print(f'{"dynamics.step.train_step":<34}{1e3 * per_ours:>10.2f}'
        f'{tokens / per_ours:>12.4g}')
  if _BASELINE.value:
    print(f'ratio train_step / baseline: {per_ours / per_base:.3f} '
          '(target <= 1.05)')
  flops = throughput.flops_per_token(params, config)
  print(f'model FLOPs: {flops / 1e6:,.1f} MFLOP/token (6N + 12LTd), '
        f'{tokens * flops / per_ours / 1e9:,.1f} GFLOP/s achieved')
  peak = throughput.peak_flops(kind, _PEAK.value)
  if peak:
    print(f'MFU: {100 * tokens * flops / per_ours / peak:.2f}% of '
          f'{peak / 1e12:g} TFLOP/s per device')
  if config.data.batch_size != full_batch:
    print(f'the config\'s {full_batch}-sequence step, extrapolated: '
          f'{per_ours * full_batch / config.data.batch_size:,.1f} s')
  if _RESULTS.value:
    record = {'size': _SIZE.value, 'device': kind, 'params': int(n_params),
              'tokens_per_step': tokens, 'dtype': config.model.dtype,
              'steps': _STEPS.value, 'repeats': _REPEATS.value,
              'ours_s_per_step': per_ours, 'ours_tokens_per_s': tokens / per_ours,
              'rounds_ours_s': t_ours, 'rounds_baseline_s': t_base,
              'model_flops_per_token': float(flops),
              'gflops_per_s': tokens * flops / per_ours / 1e9,
              'peak_flops': peak,
              'mfu': tokens * flops / per_ours / peak if peak else None,
              'jax': jax.__version__}
    if _BASELINE.value:
      record.update(baseline_s_per_step=per_base,
                    ratio_to_baseline=per_ours / per_base)
    print(outputs.wrote([_RESULTS.value],
                        outputs.write_json(_RESULTS.value, record,
                                           provenance=True)))


if __name__ == '__main__':
  app.run(main)
