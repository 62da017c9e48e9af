r"""Throughput and model-FLOPs utilisation (MFU) of the training step.

Command (on a GPU; GPT-2-small: 12 layers, width 768, 12 heads, 1024 tokens,
vocabulary 50257, bfloat16 compute, cuDNN attention):
  python -m experiments.bench_scale --size=gpt2_small

On a CPU (seconds; what tests and laptops run):
  python -m experiments.bench_scale --size=tiny

For each optimizer (adamw, adamp, stable_spam, and SAM on top of adamw) it
times ``dynamics.step.train_step`` -- the very function the training loop
jits -- on random tokens and prints step time, tokens/s, model TFLOP/s and MFU;
then the cost of one Hessian-vector product relative to one gradient, and
how long an orbax checkpoint save blocks the loop (async vs sync).

Model FLOPs per token follow PaLM (Chowdhery et al., 2022, app. B):
``6 N + 12 L d T`` for ``N`` matmul parameters (embedding included: it is the
output head), ``L`` layers, width ``d`` and context ``T``; SAM does two
forward-backward passes and is counted twice. MFU divides by the device's peak
dense bf16 FLOP/s (``--peak_tflops``, or a table of known devices; unknown
devices, CPUs included, print MFU as n/a). With several devices the step runs
data-parallel over all of them (``config.mesh``) and the peak is summed.
"""

import tempfile
import time
from typing import Any, Dict, Optional

from absl import app
from absl import flags
from absl import logging

from dynamics import outputs  # Light; also takes the start load (provenance).

_SIZE = flags.DEFINE_enum('size', 'tiny', ['tiny', 'gpt2_small'], 'Model size.')
_OPTIMIZERS = flags.DEFINE_list('optimizers', ['adamw', 'adamp', 'stable_spam',
                                               'sam'], 'Optimizers to time.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Global batch (default by size).')
_STEPS = flags.DEFINE_integer('steps', None, 'Timed steps (default by size).')
_PEAK = flags.DEFINE_float('peak_tflops', None,
                           'Peak dense TFLOP/s per device (default: table).')
_OUT = flags.DEFINE_string('out', None, 'Also write the results as JSON here.')

# Peak dense bf16 TFLOP/s per device (vendor figures, no sparsity).
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'L4': 121.0,
               'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0,
               'TPU v5p': 459.0, 'TPU v6 lite': 918.0}

SIZES = {
    # d_model, layers, heads, seq_len, vocab, batch, steps, dtype
    'tiny': dict(d_model=64, num_layers=2, num_heads=4, seq_len=64, vocab=256,
                 batch=8, steps=10),
    'gpt2_small': dict(d_model=768, num_layers=12, num_heads=12, seq_len=1024,
                       vocab=50257, batch=16, steps=20),
}


def peak_flops(device: Any, override: Optional[float]) -> Optional[float]:
  """Peak FLOP/s of ``device`` (None when unknown)."""
  if override:
    return override * 1e12
  kind = getattr(device, 'device_kind', '')
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12
  return None


def model_flops_per_token(params: Any, num_layers: int, d_model: int,
                          seq_len: int) -> float:
  """PaLM's 6N + 12 L d T (positional embeddings are not matmuls)."""
  import jax
  from dynamics.types import param_names
  n = sum(x.size for name, x in zip(param_names(params), jax.tree.leaves(params))
          if 'pos_embed' not in name)
  return 6.0 * n + 12.0 * num_layers * d_model * seq_len


def bench_config(size: str, optimizer: str, on_gpu: bool):
  """configs/wsd.py at ``size`` with ``optimizer`` ('sam': adamw + SAM)."""
  from configs import wsd
  s = SIZES[size]
  c = wsd.get_config()
  m = c.model
  m.d_model, m.num_layers, m.num_heads = s['d_model'], s['num_layers'], s['num_heads']
  m.max_len = c.data.seq_len = s['seq_len']
  c.data.vocab_size = s['vocab']
  c.data.batch_size = _BATCH.value or s['batch']
  if on_gpu:
    m.dtype, m.attention_impl = 'bfloat16', 'cudnn'
  c.optimizer.name = 'adamw' if optimizer == 'sam' else optimizer
  if optimizer == 'sam':
    c.optimizer.sam.rho = 0.05
  return c


def bench_optimizer(size: str, optimizer: str, steps: int) -> Dict[str, Any]:
  import jax
  from dynamics import timing
  on_gpu = jax.devices()[0].platform == 'gpu'
  config = bench_config(size, optimizer, on_gpu)
  from experiments.bench_gpu_parts import build_step
  _, step_fn, state, batch = build_step(config)
  holder = {'state': state}

  def one():
    holder['state'], metrics = step_fn(holder['state'], batch)
    return metrics['loss']

  t0 = time.perf_counter()
  jax.block_until_ready(one())
  compile_s = time.perf_counter() - t0
  seconds = timing.pipelined_seconds(one, steps)
  tokens = config.data.batch_size * config.data.seq_len
  m = config.model
  flops = model_flops_per_token(state.params, m.num_layers, m.d_model,
                                config.data.seq_len) * tokens
  if optimizer == 'sam':
    flops *= 2  # Two forward-backward passes.
  peak = peak_flops(jax.devices()[0], _PEAK.value)
  peak = peak * jax.device_count() if peak else None
  return dict(optimizer=optimizer, step_ms=1e3 * seconds,
              tokens_per_s=tokens / seconds, model_tflops=flops / seconds / 1e12,
              mfu=(flops / seconds / peak) if peak else None,
              compile_s=compile_s)


def bench_hvp(size: str, steps: int) -> Dict[str, float]:
  """Seconds of one HVP (forward-over-reverse) / one gradient, same batch."""
  import jax
  from analysis import hessian
  from dynamics import losses, timing
  on_gpu = jax.devices()[0].platform == 'gpu'
  config = bench_config(size, 'adamw', on_gpu)
  from experiments.bench_gpu_parts import build_step
  parts, _, state, batch = build_step(config)

  def loss_fn(params, b):
    return losses.compute_loss(parts.model, params, {}, b, None, parts.options,
                               train=False)[0]

  grad = jax.jit(jax.grad(loss_fn))
  hvp = hessian.hvp_fn(loss_fn, state.params, [batch])
  v = jax.tree.map(jax.numpy.ones_like, state.params)
  t_grad = timing.pipelined_seconds(lambda: grad(state.params, batch), steps)
  t_hvp = timing.pipelined_seconds(lambda: hvp(v), steps)
  return dict(grad_ms=1e3 * t_grad, hvp_ms=1e3 * t_hvp, ratio=t_hvp / t_grad)


def bench_checkpoint(size: str) -> Dict[str, float]:
  """Blocking seconds of one orbax save of the adamw state: async vs sync."""
  import jax
  from dynamics import checkpoint as checkpoint_lib
  config = bench_config(size, 'adamw', jax.devices()[0].platform == 'gpu')
  from experiments.bench_gpu_parts import build_step
  _, step_fn, state, batch = build_step(config)
  state, _ = step_fn(state, batch)
  out = {}
  for mode in ('async', 'sync'):
    with tempfile.TemporaryDirectory() as tmp:
      ckpt = checkpoint_lib.Checkpointer(tmp, async_save=mode == 'async')
      stalls = []
      for step in (1, 2, 3):
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        ckpt.save(step, state, {'position': step})
        stalls.append(time.perf_counter() - t0)
        time.sleep(0.5 if mode == 'async' else 0.0)  # Training goes on.
      t0 = time.perf_counter()
      ckpt.close()
      out[f'{mode}_stall_ms'] = 1e3 * sum(stalls[1:]) / 2  # First: warm-up.
      out[f'{mode}_close_ms'] = 1e3 * (time.perf_counter() - t0)
  out['state_mb'] = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  import jax
  size = _SIZE.value
  steps = _STEPS.value or SIZES[size]['steps']
  device = jax.devices()[0]
  machine = f'{jax.device_count()} x {getattr(device, "device_kind", device.platform)}'
  print(f'# bench_scale --size={size} on {machine} (jax {jax.__version__})')
  rows = []
  print(f'{"optimizer":<12} {"step ms":>9} {"tokens/s":>11} {"TFLOP/s":>8} '
        f'{"MFU":>6} {"compile s":>9}')
  for name in _OPTIMIZERS.value:
    r = bench_optimizer(size, name, steps)
    rows.append(r)
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] is not None else 'n/a'
    print(f'{name:<12} {r["step_ms"]:>9.2f} {r["tokens_per_s"]:>11,.0f} '
          f'{r["model_tflops"]:>8.3f} {mfu:>6} {r["compile_s"]:>9.1f}',
          flush=True)
  hvp = bench_hvp(size, steps)
  print(f'HVP / gradient cost: {hvp["ratio"]:.2f} ({hvp["hvp_ms"]:.2f} ms / '
        f'{hvp["grad_ms"]:.2f} ms)')
  ck = bench_checkpoint(size)
  print(f'checkpoint save ({ck["state_mb"]:.1f} MB state) blocks the loop '
        f'{ck["async_stall_ms"]:.1f} ms async vs {ck["sync_stall_ms"]:.1f} ms '
        'sync')
  if _OUT.value:
    print(outputs.wrote([_OUT.value], outputs.write_json(
        _OUT.value, dict(machine=machine, size=size, steps=steps,
                         optimizers=rows, hvp=hvp, checkpoint=ck), indent=2,
        provenance=True)))


if __name__ == '__main__':
  app.run(main)
