r"""Benchmarks of analysis.hessian against what a user would otherwise run.

Command: ``python -m experiments.bench_hessian [--quick | --warm] [--out=PATH]``

One run, ratios measured in it, written to ``results/bench_hessian.json``
with the machine and versions (``--quick``: fewer seeds, no PyHessian, written
to ``results/bench_hessian.quick.json`` so that the README's figures stay;
``--warm``: the warm-call row alone, to ``results/bench_hessian.warm.json``). The model is the issue's: a 64-64-10 tanh MLP
on 512 digits (4,810 parameters, cross-entropy, float32), trained with the
config's SGD for ``TRAIN_STEPS`` steps; the reference is a dense ``eigh`` of
its Hessian.

Rows:
  * top-5 eigenvalues with the defaults: error, HVPs, converged;
  * the first call in a fresh Python process (compilation included), ours
    against PyHessian 0.1 (PyPI, torch CPU; its defaults: deflated power
    iteration, tol 1e-3, at most 100 HVPs per eigenvalue), each in its own
    subprocess, alternating, medians of ``REPEATS``; beside them the first
    call of the plain jitted Lanczos of the warm row at ours' total HVPs
    (no convergence test: the least a compiled loop compiles);
  * warm calls (the on-device loop, and the host-driven one) against a plain
    jitted Lanczos with full reorthogonalization (a ``lax.fori_loop``,
    matfree's ``tridiag_sym`` + ``eigh_partial`` written inline) at equal
    HVPs: ours' Lanczos HVPs, and those plus the true residuals'; and at 100;
  * the trace: PyHessian's Hutchinson (its defaults) against ours;
  * the spread of trace estimates (over seeds) at 30 and 100 HVPs: Hutchinson,
    Hutch++, XTrace; of the diagonal: Hutchinson, XDiag;
  * SLQ: 10 probes batched (vmap) against one after another;
  * a per-layer block report; the HVP cost relative to a gradient.
"""

import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from analysis import lanczos as lz
from dynamics import provenance
from dynamics.timing import seconds_per_call as timed  # Median, after a warm-up.
from experiments.bench_curvature_baselines import (CountingHVP, plain_lanczos,
                                                   torch_mlp)
from experiments.bench_hessian_table import readme_rows, warm_row

TRAIN_STEPS = 600
REPEATS = 3


def mlp_problem():
  """``(run, params, loss_fn, batch)``: the issue's MLP after training."""
  from configs import jacobian
  from dynamics.runs import Run
  config = jacobian.get_config()
  config.model.activation = 'tanh'
  config.data.batch_size = 512
  run = Run(config)
  state = run.init_state()
  for t in range(TRAIN_STEPS):
    state, _ = run.train_step(state, jax.tree.map(jnp.asarray,
                                                  run.dataset.train_batch(t)))
  return run, state.params, run.loss_fn(state.model_state), \
      run.dataset.train_batch(0)


def child(which, path, cache='off', steps=0):
  """One first call in this (fresh) process on the problem saved at
  ``path``; prints ``RESULT {json}``. ``which``: 'ours', 'pyhessian', or
  'plain' (the warm row's baseline, a plain jitted Lanczos of ``steps``
  HVPs: the least a compiled loop compiles). ``cache``: JAX's persistent
  compilation cache directory for ours and plain (`dynamics.compile_cache`,
  as the analysis commands enable it), or 'off'."""
  if which in ('ours', 'plain') and cache != 'off':
    from dynamics import compile_cache
    compile_cache.enable(cache)
  from configs import jacobian
  from dynamics.runs import Run
  config = jacobian.get_config()
  config.model.activation = 'tanh'
  config.data.batch_size = 512
  run = Run(config)
  saved = np.load(path)
  params = {layer: {name: jnp.asarray(saved[f'{layer}/{name}'])
                    for name in ('bias', 'kernel')}
            for layer in ('dense_0', 'head')}
  batch = {'inputs': saved['inputs'], 'targets': saved['targets']}
  loss = run.loss_fn({})
  if which == 'ours':
    from analysis import hessian as hs
    t0 = time.perf_counter()
    vals, _, info = hs.top_eigenpairs(
        hs.curvature('hessian', params, [batch], loss_fn=loss), k=5,
        return_info=True)
    seconds = time.perf_counter() - t0
    out = {'seconds': seconds, 'eigenvalues': np.asarray(vals).tolist(),
           'hvps': info['num_hvps'], 'residual_hvps': info['residual_hvps']}
  elif which == 'plain':
    from analysis import hessian as hs
    t0 = time.perf_counter()
    op = hs.curvature('hessian', params, [batch], loss_fn=loss)
    vals = np.asarray(plain_lanczos(op.matvec, params, steps)())
    seconds = time.perf_counter() - t0
    out = {'seconds': seconds, 'eigenvalues': vals.tolist(), 'hvps': steps}
  else:
    import importlib
    import torch
    pyh_module = importlib.import_module('pyhessian.hessian')
    model, x, y = torch_mlp(params, batch)
    with CountingHVP(pyh_module) as counter:
      t0 = time.perf_counter()
      h = pyh_module.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y),
                             cuda=False)
      vals, _ = h.eigenvalues(top_n=5)
      seconds = time.perf_counter() - t0
    out = {'seconds': seconds, 'eigenvalues': vals, 'hvps': counter.count}
  print('RESULT ' + json.dumps(out), flush=True)


def first_calls(params, batch):
  """Alternating fresh-process first calls: ours (empty, warm cache), the
  plain jitted Lanczos at ours' HVPs (empty, warm cache), PyHessian."""
  import itertools
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'problem.npz')
    np.savez(path, inputs=batch['inputs'], targets=batch['targets'],
             **{f'{layer}/{name}': np.asarray(x) for layer, leaves in
                params.items() for name, x in leaves.items()})
    caches = itertools.count()

    def call(which, cache, steps=0):
      proc = subprocess.run(
          [sys.executable, '-m', 'experiments.bench_hessian',
           f'--child={which}', f'--problem={path}', f'--cache={cache}',
           f'--steps={steps}'], capture_output=True, text=True, timeout=900)
      line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if not line:
        raise RuntimeError(proc.stderr[-2000:])
      return json.loads(line[-1][len('RESULT '):])

    def empty():  # A new, empty cache directory: everything compiles.
      return os.path.join(tmp, f'cache{next(caches)}')

    warm_cache = empty()
    first = call('ours', warm_cache)  # Fills the warm cache,
    steps = first['hvps'] + first['residual_hvps']  # (ours' total HVPs)
    call('plain', warm_cache, steps)  # and the plain loop's.
    results = {'ours': [], 'ours_warm_cache': [], 'plain': [],
               'plain_warm_cache': [], 'pyhessian': []}
    for _ in range(REPEATS):
      results['ours'].append(call('ours', empty()))
      results['ours_warm_cache'].append(call('ours', warm_cache))
      results['plain'].append(call('plain', empty(), steps))
      results['plain_warm_cache'].append(call('plain', warm_cache, steps))
      results['pyhessian'].append(call('pyhessian', 'off'))
  return results


def rel_errors(got, exact):
  return (np.abs(np.asarray(got, np.float64) - exact) / np.abs(exact)).tolist()


def warm_calls(op, params, info, exact, rounds=None):
  """Warm top-5 calls: ours (the on-device loop, and the host-driven loop
  for comparison) against a plain jitted full-reorthogonalization Lanczos at
  equal HVPs: ours' Lanczos HVPs, and those plus the true residuals'; then
  the same at 100 Lanczos HVPs (``tol=0``: no early stop). Under load, each
  time is the minimum over ``rounds`` interleaved rounds of 5 calls (the
  least disturbed), the median beside it."""
  from analysis import hessian as hs
  from dynamics.timing import call_seconds
  hvps, extra = info['num_hvps'], info['residual_hvps']
  calls = {
      'ours': lambda: hs.top_eigenpairs(op, k=5)[0],
      'host_driver': lambda: lz.eigsh(
          op.matvec, op.like, 5, key=jax.random.PRNGKey(0),
          driver='host').eigvals,
      'plain': plain_lanczos(op.matvec, params, hvps),
      'plain_total': plain_lanczos(op.matvec, params, hvps + extra),
      'ours_100': lambda: hs.top_eigenpairs(op, k=5, num_iters=100,
                                            tol=0.0)[0],
      'plain_100': plain_lanczos(op.matvec, params, 100),
      'plain_100_total': plain_lanczos(op.matvec, params, 105)}
  times = {name: [] for name in calls}
  for _ in range(rounds or REPEATS):
    for name, fn in calls.items():
      times[name] += call_seconds(fn, repeats=5)
  best = {name: min(t) for name, t in times.items()}
  median = {name: float(np.median(t)) for name, t in times.items()}
  return {
      'driver': 'device', 'hvps': hvps, 'residual_hvps': extra,
      'timing': f'min of {len(times["ours"])} calls in '
                f'{rounds or REPEATS} interleaved rounds',
      'load_average': os.getloadavg(),
      'ours_seconds': best['ours'], 'plain_lanczos_seconds': best['plain'],
      'ratio': best['ours'] / best['plain'],
      'plain_total_seconds': best['plain_total'],
      'ratio_total': best['ours'] / best['plain_total'],
      'host_driver_seconds': best['host_driver'],
      'ratio_host_driver': best['host_driver'] / best['plain'],
      'ours_100_seconds': best['ours_100'],
      'plain_100_seconds': best['plain_100'],
      'ratio_100': best['ours_100'] / best['plain_100'],
      'plain_100_total_seconds': best['plain_100_total'],
      'ratio_100_total': best['ours_100'] / best['plain_100_total'],
      'median_seconds': median,
      'plain_rel_errors': rel_errors(np.asarray(calls['plain']()), exact[:5]),
      'hvp_seconds': timed(lambda: op.matvec(params))}


def main(argv, out_path=None):
  from analysis import hessian as hs
  from jax.flatten_util import ravel_pytree
  quick = '--quick' in argv
  warm_only = '--warm' in argv
  out = {'machine': {'platform': platform.platform(),
                     'processor': platform.processor(),
                     'cpu_count': os.cpu_count(),
                     'device': jax.devices()[0].device_kind,
                     'load_average_at_start': os.getloadavg()},
         'versions': {'jax': jax.__version__, 'numpy': np.__version__}}
  try:
    import pyhessian  # noqa: F401  pylint: disable=unused-import
    import torch
    out['versions'].update(torch=torch.__version__, pyhessian='0.1')
  except ImportError:
    out['versions']['pyhessian'] = None
  run, params, loss, batch = mlp_problem()
  flat, unravel = ravel_pytree(params)
  batch_j = jax.tree.map(jnp.asarray, batch)
  dense = jax.jit(jax.hessian(lambda x: loss(unravel(x), batch_j)))(flat)
  w = np.linalg.eigvalsh(np.asarray(dense, np.float64))[::-1]
  exact_trace = float(np.trace(np.asarray(dense, np.float64)))
  exact_diag = np.diag(np.asarray(dense, np.float64))
  out['model'] = {'num_params': int(flat.size), 'examples': 512,
                  'train_steps': TRAIN_STEPS, 'top6': w[:6].tolist(),
                  'gap_4_5_relative': float((w[3] - w[4]) / w[0]),
                  'trace': exact_trace}
  print('model:', out['model'], flush=True)

  # Defaults: converged top-5. One operator for every measurement.
  op = hs.curvature('hessian', params, [batch], loss_fn=loss)
  vals, _, info = hs.top_eigenpairs(op, k=5, return_info=True)
  hvps = info['num_hvps']
  out['top5_defaults'] = {'rel_errors': rel_errors(vals, w[:5]),
                          'hvps': hvps, 'converged': info['converged'],
                          'tol': info['tol']}
  print('top-5 with the defaults:', out['top5_defaults'], flush=True)
  out['warm'] = warm_calls(op, params, info, w, rounds=5 if warm_only else None)
  print('warm calls:', out['warm'], flush=True)
  if warm_only:  # The warm row alone, in its own file.
    path = out_path or os.path.join('results', 'bench_hessian.warm.json')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
      json.dump({**out, 'provenance': provenance.provenance()}, f, indent=2)
    print('wrote', path)
    print(warm_row(out))
    return

  # First calls in fresh processes, against PyHessian.
  if out['versions']['pyhessian'] and not quick:
    firsts = first_calls(params, batch)
    ours_s = float(np.median([r['seconds'] for r in firsts['ours']]))
    pyh_s = float(np.median([r['seconds'] for r in firsts['pyhessian']]))
    pyh = firsts['pyhessian'][0]
    top_by_magnitude = np.sort(w[np.argsort(-np.abs(w))[:5]])[::-1]
    out['first_call'] = {
        'ours_seconds': [r['seconds'] for r in firsts['ours']],
        'pyhessian_seconds': [r['seconds'] for r in firsts['pyhessian']],
        'ratio_median': ours_s / pyh_s,
        'ours_warm_cache_seconds': [r['seconds']
                                    for r in firsts['ours_warm_cache']],
        'ratio_warm_cache': float(np.median(
            [r['seconds'] for r in firsts['ours_warm_cache']])) / pyh_s,
        'plain_hvps': firsts['plain'][0]['hvps'],
        'plain_seconds': [r['seconds'] for r in firsts['plain']],
        'plain_warm_cache_seconds': [r['seconds']
                                     for r in firsts['plain_warm_cache']],
        'ratio_plain': float(np.median(
            [r['seconds'] for r in firsts['plain']])) / pyh_s,
        'ratio_plain_warm_cache': float(np.median(
            [r['seconds'] for r in firsts['plain_warm_cache']])) / pyh_s,
        'ours_rel_errors': rel_errors(firsts['ours'][0]['eigenvalues'], w[:5]),
        'ours_hvps': firsts['ours'][0]['hvps'],
        'pyhessian_rel_errors': rel_errors(np.sort(pyh['eigenvalues'])[::-1],
                                           top_by_magnitude),
        'pyhessian_hvps': pyh['hvps']}
    print('first call:', out['first_call'], flush=True)

    # PyHessian's trace (its defaults) against ours.
    import importlib
    import torch
    pyh_module = importlib.import_module('pyhessian.hessian')
    model, x, y = torch_mlp(params, batch)
    with CountingHVP(pyh_module) as counter:
      t0 = time.perf_counter()
      vhv = pyh_module.hessian(model, torch.nn.CrossEntropyLoss(),
                               data=(x, y), cuda=False).trace()
      pyh_seconds = time.perf_counter() - t0
    row = {'exact': exact_trace, 'pyhessian': float(np.mean(vhv)),
           'pyhessian_rel_error': float(abs(np.mean(vhv) / exact_trace - 1)),
           'pyhessian_hvps': counter.count, 'pyhessian_seconds': pyh_seconds}
    for name, kwargs in (('ours_default', {}),
                         ('ours_xtrace_100', dict(method='xtrace',
                                                  num_hvps=100))):
      estimate, stderr, tinfo = hs.trace(op, return_info=True, **kwargs)
      row[name] = {'estimate': estimate, 'stderr': stderr,
                   'rel_error': abs(estimate / exact_trace - 1),
                   'hvps': tinfo['num_hvps'],
                   'seconds_warm': timed(lambda kwargs=kwargs: hs.trace(
                       op, **kwargs)[0], repeats=3)}
    out['trace_vs_pyhessian'] = row
    print('trace vs PyHessian:', out['trace_vs_pyhessian'], flush=True)

  # Standard error of the trace and the diagonal at equal budgets.
  seeds = range(5 if quick else 20)
  spread = {}
  for budget in (30, 100):
    for method in ('hutchinson', 'hutch++', 'xtrace'):
      ests = [hs.trace(op, method=method, num_hvps=budget,
                       key=jax.random.PRNGKey(s))[0] for s in seeds]
      spread[f'{method}@{budget}'] = float(np.std(ests) / abs(exact_trace))
    for method in ('hutchinson', 'xdiag'):
      errs = [np.linalg.norm(ravel_pytree(hs.diagonal(
          op, method=method, num_hvps=budget,
          key=jax.random.PRNGKey(s)))[0] - exact_diag) for s in seeds]
      spread[f'diag_{method}@{budget}'] = float(
          np.mean(errs) / np.linalg.norm(exact_diag))
  for budget in (30, 100):
    spread[f'hutchinson_over_xtrace@{budget}'] = (
        spread[f'hutchinson@{budget}'] / spread[f'xtrace@{budget}'])
    spread[f'hutchinson_over_hutch++@{budget}'] = (
        spread[f'hutchinson@{budget}'] / spread[f'hutch++@{budget}'])
  out['estimator_spread'] = spread
  print('relative spread of estimates:', spread, flush=True)

  # SLQ: batched probes against one after another.
  slq = {}
  for name, size in (('batched', None), ('sequential', 1)):
    slq[name] = timed(lambda size=size: hs.spectral_density(
        op, num_probes=10, num_iters=80, tol=None,
        batch_size=size)[1], repeats=3)
  slq['speedup'] = slq['sequential'] / slq['batched']
  out['slq_10x80_seconds'] = slq
  print('SLQ:', slq, flush=True)

  # Per-layer report, and the cost of an HVP.
  t0 = time.perf_counter()
  report = hs.block_report(op, blocks='layers')
  out['block_report'] = {'seconds_first_call': time.perf_counter() - t0,
                         'rows': report['blocks'] + [report['whole']]}
  grad = jax.jit(jax.grad(loss))
  out['hvp_cost_in_gradients'] = (out['warm']['hvp_seconds']
                                  / timed(lambda: grad(params, batch_j)))
  print('block report:', [(r['name'], round(r['top_eigenvalue'], 4),
                           round(r['trace'], 4)) for r in out['block_report'][
                               'rows']], flush=True)
  # A --quick run never replaces the full figures the README quotes.
  path = out_path or os.path.join(
      'results', 'bench_hessian.quick.json' if quick else 'bench_hessian.json')
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump({**out, 'provenance': provenance.provenance()}, f, indent=2)
  print('wrote', path)
  print(readme_rows(out))


if __name__ == '__main__':
  options = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
  if 'child' in options:
    child(options['child'], options['problem'], options.get('cache', 'off'),
          int(options.get('steps', 0)))
  else:
    main(sys.argv, options.get('out'))
