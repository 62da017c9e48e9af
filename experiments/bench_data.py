r"""Benchmark: tokens/s of the token-file reader alone, against training.

  python -m experiments.bench_data                       # synthetic shards
  python -m experiments.bench_data --path=data/c4_t5     # your shards

Reads ``--batches`` training batches of ``--batch_size`` x ``--seq_len``
(default: the LLaMA-C4 configs' 512 x 256) from a token directory (default: a
temporary one of ``--tokens`` random uint16 ids in two shards) through
``dynamics.data.TokenFiles`` -- permutation, memory maps, windows -- and
prints tokens/s, once with the page cache cold-ish (the first pass over
freshly written files) and once warm, and per process when ``--processes``
processes each read their rows. It then times the training step of
``configs/wsd.py`` on this machine (target: the reader at >= 50x its
tokens/s) and, from the FLOP count of ``dynamics.throughput``, the tokens/s
one H100 would consume training each LLaMA-C4 size at 40% MFU: what the
reader must sustain per accelerator host. ``--results=PATH`` writes the
figures as JSON.
"""

import statistics
import tempfile
import time

from absl import flags

from dynamics import cli
from dynamics import outputs  # Also takes the start load (provenance).

_PATH = flags.DEFINE_string('path', None, 'Token directory (default: '
                            'synthetic shards in a temporary directory).')
_TOKENS = flags.DEFINE_integer('tokens', 50_000_000, 'Synthetic tokens.')
_BATCH = flags.DEFINE_integer('batch_size', 512, 'Sequences per batch.')
_SEQ = flags.DEFINE_integer('seq_len', 256, 'Tokens per sequence.')
_BATCHES = flags.DEFINE_integer('batches', 200, 'Batches per timed pass.')
_PROCESSES = flags.DEFINE_integer('processes', 8, 'Processes sharing a batch.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 20, 'Timed steps of '
                                    'configs/wsd.py (0: skip).')
_RESULTS = flags.DEFINE_string('results', None, 'Write the figures as JSON.')


def reader_rate(dataset, batches: int, part: int = 0, parts: int = 1) -> float:
  """Tokens/s of ``train_slice`` over ``batches`` consecutive batches."""
  start, count = time.perf_counter(), 0
  for i in range(batches):
    count += dataset.train_slice(i, part, parts)['inputs'].size
  return count / (time.perf_counter() - start)


def train_rate(steps: int) -> float:
  """Tokens/s of the training step of ``configs/wsd.py`` (median of 3)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import wsd  # pylint: disable=g-import-not-at-top
  from dynamics import runs, timing  # pylint: disable=g-import-not-at-top
  config = wsd.get_config()
  run = runs.Run(config)
  batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(0))
  holder = {'state': run.init_state()}

  def steps_round():
    state = holder['state']
    for _ in range(steps):
      state, metrics = run.train_step(state, batch)
    holder['state'] = state
    return metrics

  seconds = timing.seconds_per_call(steps_round, repeats=3) / steps
  return config.data.batch_size * config.data.seq_len / seconds


def gpu_needs(mfu: float = 0.4, peak: float = 989e12) -> dict:
  """Tokens/s one H100 consumes at ``mfu`` for each LLaMA-C4 size."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import llama_c4  # pylint: disable=g-import-not-at-top
  from dynamics import models, throughput  # pylint: disable=g-import-not-at-top
  from dynamics.data import DatasetInfo  # pylint: disable=g-import-not-at-top
  out = {}
  for size in llama_c4.SIZES:
    c = llama_c4.get_config(size)
    info = DatasetInfo('lm', 32_000, 32_000, (c.data.seq_len,))
    model = models.build_model(c.model, info)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.numpy.zeros((1, c.data.seq_len), 'int32'))
    flops = throughput.flops_per_token(params['params'], c)
    out[size] = mfu * peak / flops
  return out


def main(argv):
  del argv
  from dynamics.data import TokenFiles, tokens  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = _PATH.value
    if path is None:
      print(f'writing {_TOKENS.value:,} synthetic tokens to {tmp} ...')
      path = tokens.write_synthetic(tmp, _TOKENS.value)
    dataset = TokenFiles(path, _SEQ.value, _BATCH.value, seed=0)
    print(f'{path}: {dataset.num_windows:,} windows of {_SEQ.value + 1} '
          f'tokens; batches of {_BATCH.value} x {_SEQ.value}')
    first = reader_rate(dataset, _BATCHES.value)
    warm = statistics.median(reader_rate(dataset, _BATCHES.value)
                             for _ in range(3))
    per_process = reader_rate(dataset, _BATCHES.value, 1, _PROCESSES.value)
  figures = {'reader_tokens_per_s_first_pass': first,
             'reader_tokens_per_s': warm,
             f'reader_tokens_per_s_one_of_{_PROCESSES.value}_processes':
                 per_process,
             'batch': [_BATCH.value, _SEQ.value]}
  print(f'reader: {first:,.0f} tokens/s first pass, {warm:,.0f} tokens/s '
        f'warm; one of {_PROCESSES.value} processes reading its rows: '
        f'{per_process:,.0f} tokens/s')
  if _TRAIN_STEPS.value:
    train = train_rate(_TRAIN_STEPS.value)
    figures['wsd_train_tokens_per_s'] = train
    print(f'configs/wsd.py training step: {train:,.0f} tokens/s; the reader '
          f'is {warm / train:,.0f}x faster (target >= 50x)')
  needs = gpu_needs()
  figures['h100_tokens_per_s_at_40pct_mfu'] = needs
  for size, rate in needs.items():
    print(f'LLaMA-{size} on one H100 at 40% MFU consumes {rate:,.0f} '
          f'tokens/s: the reader covers {warm / rate:,.1f} such GPUs')
  if _RESULTS.value:
    print(outputs.wrote([_RESULTS.value], outputs.write_json(
        _RESULTS.value, figures, provenance=True)))


if __name__ == '__main__':
  cli.run(main)
