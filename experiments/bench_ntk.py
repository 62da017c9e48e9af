r"""Benchmarks of analysis/ntk.py and analysis/jacobian.py (one run, ratios).

Command: ``python -m experiments.bench_ntk [--quick] [--no_dense] [--out=PATH]``

Prints and writes ``runs/bench_ntk.json``:
  * empirical NTK: seconds per kernel entry, 'jacobian' vs 'ntvp', on an MLP
    and on the smoke transformer (``configs/wsd.py:smoke``), over growing
    probe sets (the crossover is where the ratio passes 1);
  * training Jacobian: the cost of one J v (and one J^T u) relative to one
    training run, on ``configs/jacobian.py``;
  * the dense 4,810 x 4,810 training Jacobian of that run, against the same
    Jacobian computed the way the paper's released code does it (``jax.jacfwd``
    of a plain ``lax.scan`` training loop, all basis vectors at once), timed in
    the same run (the paper reports ~75 s for it on 2 CPU cores), with XLA's
    count of the tangent FLOPs and this machine's measured matmul throughput;
  * on a GPU: the 256 x 256 NTK of a 784-512-512-10 MLP.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import outputs, timing


def ntk_per_entry(apply_fn, params, x, sizes):
  from analysis import ntk
  rows = []
  for n in sizes:
    row = {'n': n}
    for method in ('jacobian', 'ntvp'):
      sec = timing.seconds_per_call(
          lambda: ntk.empirical_ntk(apply_fn, params, x[:n], method=method),
          repeats=1)
      row[method + '_us_per_entry'] = 1e6 * sec / n ** 2
    row['ntvp_over_jacobian'] = row['ntvp_us_per_entry'] / row['jacobian_us_per_entry']
    print(row, flush=True)
    rows.append(row)
  return rows


def matmul_gflops(n: int = 2048) -> float:
  """This machine's float32 matmul throughput (GFLOP/s), the compute ceiling."""
  a = jnp.ones((n, n), jnp.float32)
  sec = timing.seconds_per_call(lambda: jnp.dot(a, a), repeats=5)
  return 2 * n ** 3 / sec / 1e9


def reference_style_train_fn(config, parts):
  """The run of ``config`` written as the paper's released code writes it.

  A plain ``lax.scan`` over the same batches of ``grad`` of the mean
  cross-entropy and ``optax.sgd`` with momentum on the same schedule, from the
  same initialization: the baseline for the dense Jacobian (``jax.jacfwd`` of
  this function is the reference's method). ``parts``: the config's
  `dynamics.runs.Run` (or its ``Parts``), for its dataset and model.
  """
  import optax
  from dynamics import schedules
  batches = [parts.dataset.train_batch(i) for i in range(config.num_steps)]
  xs = jnp.asarray(np.stack([b['inputs'] for b in batches]))
  ys = jnp.asarray(np.stack([b['targets'] for b in batches]))
  tx = optax.sgd(schedules.from_config(config),
                 momentum=config.optimizer.momentum.momentum)

  def loss(params, x, y):
    logits = parts.model.apply({'params': params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train(params):
    def step(carry, batch):
      p, s = carry
      grads = jax.grad(loss)(p, *batch)
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
    return p

  return train


def dense_against_reference(config, run, train_fn, params_0):
  """The dense training Jacobian, ours (`analysis.jacobian.training_jacobian`)
  and the reference's way (``jax.jacfwd`` of `reference_style_train_fn`):
  ``(ours, ours' seconds, the reference's seconds, max relative difference)``.
  Wall times of a user's call: compilation (and our determinism check)
  included."""
  from jax.flatten_util import ravel_pytree
  from analysis import jacobian as jac_lib
  t0 = time.perf_counter()
  jac = jax.block_until_ready(jac_lib.training_jacobian(train_fn,
                                                        params_0=params_0))
  ours = time.perf_counter() - t0
  reference = reference_style_train_fn(config, run)
  flat0, unravel = ravel_pytree(params_0)
  t0 = time.perf_counter()
  jac_ref = jax.block_until_ready(jax.jacfwd(
      lambda flat: ravel_pytree(reference(unravel(flat)))[0])(flat0))
  baseline = time.perf_counter() - t0
  gap = float(jnp.max(jnp.abs(jac - jac_ref)) / jnp.max(jnp.abs(jac_ref)))
  return jac, ours, baseline, gap


def tangent_flops_per_step(train_fn_1, params_0) -> float:
  """XLA's FLOP count of one step's tangent (JVP minus primal), one direction."""
  def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])
  jvp = flops(lambda v: jax.jvp(train_fn_1, (params_0,), (v,)), params_0)
  return jvp - flops(train_fn_1, params_0)


def model_of(config):
  """``(run, state, apply_fn)``: the config built once, its initialization,
  and its inference-mode ``apply_fn``."""
  from dynamics import runs
  run = runs.Run(config)
  state = run.init_state()
  return run, state, run.apply_fn(state.model_state)


def main(quick, dense=True, path=os.path.join('runs', 'bench_ntk.json')):
  from analysis import jacobian as jac_lib
  from configs import jacobian as jacobian_config
  from configs import wsd
  from dynamics import runs
  from dynamics.models import MLP
  out = {'device': str(jax.devices()[0]), 'cpu_count': os.cpu_count()}
  # NTK on an MLP (digits-sized inputs) and on the smoke transformer.
  mlp = MLP(hidden_sizes=(128, 128), num_outputs=10, activation='relu')
  x = jax.random.normal(jax.random.key(0), (128, 64))
  params = mlp.init(jax.random.key(1), x[:1])['params']
  sizes = (8, 32) if quick else (8, 32, 128)
  out['ntk_mlp_64_128_128_10'] = ntk_per_entry(lambda p, x: mlp.apply({'params': p}, x),
                                               params, x, sizes)
  trun, state, apply_fn = model_of(wsd.get_config('smoke'))
  tokens = jnp.asarray(np.concatenate([trun.dataset.eval_batch(i)['inputs'] for i in range(4)]))
  out['ntk_smoke_transformer'] = ntk_per_entry(apply_fn, state.params, tokens,
                                               (4, 8) if quick else (4, 8, 16))
  # Training Jacobian: J v and J^T u against one training run.
  config = jacobian_config.get_config()
  if quick:
    config.num_steps = 100
  run = runs.Run(config)  # Built once for every use below.
  train_fn, p0 = jac_lib.make_train_fn(run)
  run_fn = jax.jit(train_fn)
  jvp, vjp = jac_lib.training_jacobian_fn(train_fn, params_0=p0)
  t_run = timing.seconds_per_call(lambda: run_fn(p0), repeats=3)
  t_jvp = timing.seconds_per_call(lambda: jvp(p0), repeats=3)
  t_vjp = timing.seconds_per_call(lambda: vjp(p0), repeats=3)
  out['training_jacobian'] = {'steps': config.num_steps, 'train_run_s': t_run,
                              'jvp_over_run': t_jvp / t_run, 'vjp_over_run': t_vjp / t_run}
  print(out['training_jacobian'], flush=True)
  if dense and not quick:
    from jax.flatten_util import ravel_pytree
    jac, ours, baseline, gap = dense_against_reference(config, run, train_fn,
                                                       p0)
    flat0, _ = ravel_pytree(p0)
    train_fn_1, _ = jac_lib.make_train_fn(run, 1)
    tangent = tangent_flops_per_step(train_fn_1, p0)
    # XLA's own count (its cost model may not count every op of the loop).
    total_flops = tangent * flat0.size * config.num_steps
    peak = matmul_gflops()
    out['dense_training_jacobian'] = {
        'shape': list(jac.shape), 'ours_s': ours, 'reference_jacfwd_s': baseline,
        'speedup_vs_reference': baseline / ours,
        'max_relative_difference': gap,
        'xla_counted_tangent_tflop': total_flops / 1e12, 'matmul_gflops': peak}
    print('dense training Jacobian', out['dense_training_jacobian'], flush=True)
  if jax.devices()[0].platform == 'gpu':
    from analysis import ntk
    big = MLP(hidden_sizes=(512, 512), num_outputs=10, activation='relu')
    xb = jax.random.normal(jax.random.key(2), (256, 784))
    pb = big.init(jax.random.key(3), xb[:1])['params']
    out['gpu_ntk_256_784_512_512_10_ms'] = 1e3 * timing.seconds_per_call(
        lambda: ntk.empirical_ntk(lambda p, x: big.apply({'params': p}, x), pb, xb,
                                  method='jacobian'), repeats=5)
  print(json.dumps(out, indent=1))
  print(outputs.wrote([path], outputs.write_json(path, out, provenance=True)))


if __name__ == '__main__':
  args = sys.argv[1:]
  main('--quick' in args, dense='--no_dense' not in args,  # A 5-min part.
       path=next((a.split('=', 1)[1] for a in args if a.startswith('--out=')),
                 os.path.join('runs', 'bench_ntk.json')))
