"""The measurements of `experiments.bench_gpu`, one function per part.

Each part takes a `Shapes` (``FULL``: the device run; ``TINY``: the CPU
smoke test) and returns a dict of figures, each measured against its
baseline in the same process. Timings are `dynamics.timing`'s (compiled,
warmed up, waited for); memory is XLA's own analysis of the compiled
function (arguments + outputs + temporaries, bytes) and, on a GPU, the
device's peak so far (``peak_bytes_in_use``).
"""

import dataclasses
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import timing


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The sizes of every part."""
  gpt2: Tuple[int, int, int, int, int, int]   # d, layers, heads, T, V, batch
  llama: Tuple[int, int, int, int, int, int]
  steps: int                                   # Timed steps per train_step.
  vocab_chunk: int
  curvature_batch: int                         # Sequences in HVP / GGN / Lanczos.
  mlp: Tuple[int, ...]                         # NTK MLP: input, hidden..., outputs.
  ntk_examples: int
  jacobian_smoke: bool                         # configs/jacobian.py:smoke.
  sharpness_steps: int
  sharpness_every: int


FULL = Shapes(gpt2=(768, 12, 12, 1024, 50_304, 16),
              llama=(768, 12, 12, 256, 32_000, 64), steps=20,
              vocab_chunk=8192, curvature_batch=4, mlp=(784, 512, 512, 10),
              ntk_examples=256, jacobian_smoke=False, sharpness_steps=1000,
              sharpness_every=100)
TINY = Shapes(gpt2=(16, 1, 2, 8, 64, 2), llama=(16, 1, 2, 8, 48, 2),
              steps=2, vocab_chunk=16, curvature_batch=2, mlp=(784, 16, 16, 10),
              ntk_examples=8, jacobian_smoke=True, sharpness_steps=4,
              sharpness_every=2)


def on_gpu() -> bool:
  return jax.devices()[0].platform == 'gpu'


def compiled_bytes(jitted: Callable, *args: Any) -> Optional[int]:
  """XLA's memory analysis of ``jitted(*args)``: arguments, outputs and
  temporaries, in bytes (None where the backend has none)."""
  try:
    m = jitted.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes
               + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def device_peak_bytes() -> Optional[int]:
  """The device's peak bytes in use so far (GPU/TPU), else None."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def lm_config(shape: str, sizes: Shapes, *, optimizer: str = 'adamw',
              levers: bool = True, sam: bool = False):
  """GPT-2 small (``configs/gpt2_owt.py``) or LLaMA-130M
  (``configs/llama_c4.py:130m``) at ``sizes`` on random tokens; ``levers``:
  bf16 compute, the vocabulary-chunked loss and (on a GPU) cuDNN
  attention; else bf16 compute, XLA attention and the plain loss."""
  if shape == 'gpt2':
    from configs import gpt2_owt
    c, (d, layers, heads, t, v, b) = gpt2_owt.get_config(), sizes.gpt2
  else:
    from configs import llama_c4
    c, (d, layers, heads, t, v, b) = llama_c4.get_config('130m'), sizes.llama
  m = c.model
  m.d_model, m.num_layers, m.num_heads = d, layers, heads
  m.mlp_hidden = None if shape == 'gpt2' else max(8, (8 * d // 3) // 8 * 8)
  m.max_len = c.data.seq_len = t
  m.vocab_size, c.data.vocab_size, c.data.batch_size = v, v, b
  m.dtype = 'bfloat16'
  m.attention_impl = 'cudnn' if (levers and on_gpu()) else 'xla'
  c.loss.vocab_chunk = sizes.vocab_chunk if levers else None
  c.optimizer.name = optimizer
  c.optimizer.sam.rho = 0.05 if sam else None
  return c


def build_step(config):
  """``(parts, jitted step, state, batch)`` of ``config`` on random tokens
  (`dynamics.step.make_train_step`, as the training loop builds it; state
  and batch laid out over ``config.mesh`` when there are several devices)."""
  from dynamics import data as data_lib
  from dynamics import models as models_lib
  from dynamics import optim as optim_lib
  from dynamics import runs
  from dynamics import schedules as schedules_lib
  from dynamics import sharding as sharding_lib
  from dynamics import step as step_lib
  d = config.data
  info = data_lib.DatasetInfo(task='lm', num_outputs=d.vocab_size,
                              vocab_size=d.vocab_size, input_shape=(d.seq_len,))
  model = models_lib.build_model(config.model, info)
  schedule = schedules_lib.from_config(config)
  tx = optim_lib.build_optimizer(config.optimizer, schedule)
  options = step_lib.StepOptions.from_config(config, 'lm')
  parts = runs.Parts(None, model, schedule, tx, options)
  tokens = np.random.default_rng(0).integers(
      0, d.vocab_size, (d.batch_size, d.seq_len + 1)).astype(np.int32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}
  key = jax.random.PRNGKey(0)
  params = model.init(key, batch['inputs'][:1], train=False)['params']
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), model_state={},
                              rng=key)
  shardings = None
  if jax.device_count() > 1:
    shardings = sharding_lib.TrainShardings.create(
        sharding_lib.make_mesh(config.mesh), state, config.mesh.fsdp_min_size)
    state = shardings.put_state(state)
  step_fn = step_lib.make_train_step(model, tx, schedule, options, shardings)
  put = shardings.put_batch if shardings else (
      lambda b: jax.tree.map(jnp.asarray, b))
  return parts, step_fn, state, put(batch)


def time_train_step(config, steps: int) -> Dict[str, Any]:
  """Step time, tokens/s, MFU (`dynamics.throughput`'s FLOP count), compile
  time, memory, and whether step 2 onwards recompiled."""
  from dynamics import throughput
  _, step_fn, state, batch = build_step(config)
  holder = {'state': state}
  flops = throughput.flops_per_token(state.params, config)
  mem = compiled_bytes(step_fn, state, batch)

  def one():
    holder['state'], metrics = step_fn(holder['state'], batch)
    return metrics['loss']

  t0 = time.perf_counter()
  jax.block_until_ready(one())
  compile_s = time.perf_counter() - t0
  size_before = step_fn._cache_size()  # pylint: disable=protected-access
  seconds = timing.pipelined_seconds(one, steps)
  recompiled = step_fn._cache_size() != size_before  # pylint: disable=protected-access
  tokens = config.data.batch_size * config.data.seq_len
  peak = throughput.peak_flops(jax.devices()[0].device_kind)
  achieved = flops * tokens / seconds
  return dict(step_ms=1e3 * seconds, tokens_per_s=tokens / seconds,
              model_tflops=achieved / 1e12,
              mfu=achieved / (peak * jax.device_count()) if peak else None,
              compile_s=compile_s, compiled_bytes=mem,
              device_peak_bytes=device_peak_bytes(),
              recompiled_after_step_1=bool(recompiled),
              params=int(sum(x.size for x in jax.tree.leaves(state.params))))


def part_train_step(sizes: Shapes, shape: str) -> Dict[str, Any]:
  """The plain step and the levered one, same shape, same run."""
  plain = time_train_step(lm_config(shape, sizes, levers=False), sizes.steps)
  levers = time_train_step(lm_config(shape, sizes), sizes.steps)
  return dict(plain=plain, levers=levers,
              speedup=plain['step_ms'] / levers['step_ms'])


def part_optimizers(sizes: Shapes, adamw: Optional[Dict[str, Any]] = None
                    ) -> Dict[str, Any]:
  """Step time of each optimizer (and SAM on AdamW) over optax.adamw's
  (``adamw``: that step's timing already made in this process, the levered
  GPT-2 step of `part_train_step`)."""
  from dynamics import optim
  out, notes = {}, {}
  base = adamw or time_train_step(lm_config('gpt2', sizes), sizes.steps)
  out['adamw'] = base
  for name in ('adamp', 'stable_spam', 'soap', 'muon'):
    if name not in optim.OPTIMIZERS:
      notes[name] = 'skipped: not in dynamics.optim.OPTIMIZERS yet'
      continue
    out[name] = time_train_step(lm_config('gpt2', sizes, optimizer=name),
                                sizes.steps)
  out['sam_adamw'] = time_train_step(lm_config('gpt2', sizes, sam=True),
                                     sizes.steps)
  ratios = {k: v['step_ms'] / base['step_ms'] for k, v in out.items()
            if k != 'adamw'}
  return dict(steps=out, ratio_to_adamw=ratios, notes=notes)


def _curvature_inputs(sizes: Shapes, dtype: str = 'bfloat16'):
  """GPT-2-small parts and a batch: XLA attention (forward-over-reverse
  HVPs differentiate the attention's backward pass) and the plain loss (the
  GGN takes the logits)."""
  config = lm_config('gpt2', sizes, levers=False)
  config.model.dtype = dtype
  config.data.batch_size = sizes.curvature_batch
  parts, _, state, batch = build_step(config)
  return parts, state.params, batch


def part_curvature(sizes: Shapes) -> Dict[str, Any]:
  """HVP (forward-over-reverse) and GGN-vector product vs one gradient."""
  from analysis import hessian
  from dynamics import losses
  parts, params, batch = _curvature_inputs(sizes)
  model, options = parts.model, parts.options
  loss_fn = lambda p, b: losses.compute_loss(model, p, {}, b, None, options,
                                             train=False)[0]
  model_fn = lambda p, b: model.apply({'params': p}, b['inputs'])
  out_loss = lambda o, b: losses.loss_from_outputs(o, b['targets'], options)[0]
  v = jax.tree.map(jnp.ones_like, params)
  grad = jax.jit(jax.grad(loss_fn))
  ops = {'hvp': hessian.curvature('hessian', params, [batch], loss_fn=loss_fn),
         'ggn': hessian.curvature('ggn', params, [batch], model_fn=model_fn,
                                  output_loss_fn=out_loss)}
  t_grad = timing.seconds_per_call(grad, params, batch)
  out = dict(gradient_ms=1e3 * t_grad,
             gradient_bytes=compiled_bytes(grad, params, batch))
  for name, op in ops.items():
    mv = jax.jit(op.matvec)
    t = timing.seconds_per_call(mv, v)
    out[f'{name}_ms'] = 1e3 * t
    out[f'{name}_over_gradient'] = t / t_grad
    out[f'{name}_bytes'] = compiled_bytes(mv, v)
  return out


def part_eigenpairs(sizes: Shapes) -> Dict[str, Any]:
  """Top-5 Hessian eigenpairs to 1e-3 relative residual: time, HVPs, the
  Lanczos basis' memory (float32 compute: bf16 round-off in each HVP is
  above the tolerance)."""
  from analysis import hessian
  from dynamics import losses
  parts, params, batch = _curvature_inputs(sizes, 'float32')
  loss_fn = lambda p, b: losses.compute_loss(parts.model, p, {}, b, None,
                                             parts.options, train=False)[0]
  op = hessian.curvature('hessian', params, [batch], loss_fn=loss_fn)
  t0 = time.perf_counter()
  vals, _, info = hessian.top_eigenpairs(op, k=5, tol=1e-3, return_info=True)
  seconds = time.perf_counter() - t0
  from analysis.lanczos import default_basis_size, default_max_matvecs
  n = int(sum(x.size for x in jax.tree.leaves(params)))
  basis = default_basis_size(5, default_max_matvecs(5, n), n)
  return dict(eigenvalues=[float(x) for x in np.asarray(vals)],
              seconds_with_compile=seconds, hvps=int(info['num_hvps']),
              converged=bool(info['converged']),
              basis_vectors=basis, basis_bytes=4 * n * basis, num_params=n)


def part_ntk(sizes: Shapes) -> Dict[str, Any]:
  """Empirical NTK of an MLP, both methods, and ``method='auto'``'s pick."""
  from analysis import ntk
  from analysis.ntk import memory
  from dynamics.models import MLP
  d_in, *hidden, k = sizes.mlp
  mlp = MLP(hidden_sizes=tuple(hidden), num_outputs=k, activation='relu')
  x = jax.random.normal(jax.random.key(2), (sizes.ntk_examples, d_in))
  params = mlp.init(jax.random.key(3), x[:1])['params']
  apply_fn = lambda p, x: mlp.apply({'params': p}, x)
  out = {'mlp': list(sizes.mlp), 'examples': sizes.ntk_examples}
  for method in ('jacobian', 'ntvp'):
    out[f'{method}_ms'] = 1e3 * timing.seconds_per_call(
        lambda m=method: ntk.empirical_ntk(apply_fn, params, x, method=m),
        repeats=3)
  out['auto_picks'] = memory.plan(apply_fn, params, len(x), len(x), x)[0]
  return out


def part_training_jacobian(sizes: Shapes) -> Dict[str, Any]:
  """The dense training Jacobian of ``configs/jacobian.py`` vs the
  reference's ``jax.jacfwd`` of a plain scan (`experiments.bench_ntk`)."""
  from analysis import jacobian as jac_lib
  from configs import jacobian as jacobian_config
  from dynamics import runs
  from experiments import bench_ntk
  config = jacobian_config.get_config('smoke' if sizes.jacobian_smoke else None)
  if sizes.jacobian_smoke:
    config.num_steps = 2
  run = runs.Run(config)
  train_fn, p0 = jac_lib.make_train_fn(run)
  jac, ours, baseline, gap = bench_ntk.dense_against_reference(
      config, run, train_fn, p0)
  return dict(shape=list(jac.shape), steps=config.num_steps, ours_s=ours,
              reference_jacfwd_s=baseline, speedup=baseline / ours,
              max_relative_difference=gap)


def part_sharpness(sizes: Shapes, workdir: str) -> Dict[str, Any]:
  """A training run with ``analysis.sharpness_every`` vs the same run
  without: wall time of `dynamics.train.train_and_evaluate` (compilation of
  each included once). The probed run goes first and pays the process's
  one-time costs, so the overhead is an upper bound."""
  import os
  from configs import wsd
  from dynamics import train
  out = {}
  for label, every in (('probe', sizes.sharpness_every), ('plain', None)):
    c = wsd.get_config('smoke' if sizes is TINY else None)
    c.num_steps, c.analysis.sharpness_every = sizes.sharpness_steps, every
    c.eval_every, c.eval_batches = c.num_steps, 1
    c.schedule.warmup_steps = min(c.schedule.warmup_steps, c.num_steps // 4)
    c.checkpoint.every_steps = c.num_steps
    c.progress = False
    t0 = time.perf_counter()
    train.train_and_evaluate(c, os.path.join(workdir, label))
    out[f'{label}_s'] = time.perf_counter() - t0
  out['steps'], out['sharpness_every'] = sizes.sharpness_steps, sizes.sharpness_every
  out['overhead'] = out['probe_s'] / out['plain_s'] - 1.0
  return out
