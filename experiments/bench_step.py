r"""Benchmark: the project's ``train_step`` against a hand-written optax step.

  python -m experiments.bench_step                 # CPU smoke transformer
  python -m experiments.bench_step --size=gpt2     # ~124M params, bf16 (GPU)

Both steps train the same model on the same batch with ``optax.adamw`` and the
same schedule; the baseline is the minimal ``jax.jit(value_and_grad + update +
apply_updates)`` with the state donated. Timing interleaves the two (after
compiling and warming both), takes the median of ``--repeats`` rounds of
``--steps`` steps each, and prints the ratio (target <= 1.05).
"""

import functools
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from configs import wsd
from dynamics import runs

_SIZE = flags.DEFINE_enum('size', 'smoke', ['smoke', 'wsd', 'gpt2'], 'Model size.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed rounds per step function.')


def bench_config(size: str):
  c = wsd.get_config('smoke' if size == 'smoke' else None)
  c.optimizer.clip_norm = None
  c.optimizer.weight_decay_mask = 'all'
  if size == 'gpt2':
    c.model.d_model, c.model.num_layers, c.model.num_heads = 768, 12, 12
    c.model.max_len = c.data.seq_len = 1024
    c.data.vocab_size, c.data.batch_size = 50304, 16
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


def time_rounds(run_round, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    run_round()
    times.append(time.perf_counter() - t)
  return times


def main(argv):
  del argv
  config = bench_config(_SIZE.value)
  run = runs.Run(config)
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

  for fn in (round_ours, round_base):  # Compile and warm up.
    fn()
  t_ours, t_base = [], []
  for _ in range(_REPEATS.value):     # Interleaved, so drift hits both.
    t_ours += time_rounds(round_ours, 1)
    t_base += time_rounds(round_base, 1)
  per_ours = statistics.median(t_ours) / _STEPS.value
  per_base = statistics.median(t_base) / _STEPS.value
  n_params = sum(x.size for x in jax.tree.leaves(params))
  tokens = config.data.batch_size * config.data.seq_len
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; '
        f'model: {n_params:,} params, {tokens} tokens/step')
  print(f'{"step":<34}{"ms/step":>10}{"tokens/s":>12}')
  print(f'{"optax.adamw hand-written":<34}{1e3 * per_base:>10.2f}{tokens / per_base:>12.4g}')
  print(f'{"dynamics.step.train_step":<34}{1e3 * per_ours:>10.2f}{tokens / per_ours:>12.4g}')
  print(f'ratio train_step / baseline: {per_ours / per_base:.3f} (target <= 1.05)')
  if _SIZE.value == 'gpt2':
    # 6 N per token for the matmuls plus attention (12 L T d per token).
    flops = tokens * (6 * n_params + 12 * config.model.num_layers
                      * config.data.seq_len * config.model.d_model)
    print(f'model FLOPs/s: {flops / per_ours / 1e12:.1f} TFLOP/s')


if __name__ == '__main__':
  app.run(main)
