r"""Benchmarks of analysis/hessian.py (one run each, ratios).

Command: ``python -m experiments.bench_hessian [--quick]``

Prints and writes ``runs/bench_hessian.json``:
  * HVP cost relative to one gradient on the same batch (target <= 3x), on the
    smoke transformer (``configs/wsd.py:smoke``) and on the ``configs/eos.py``
    MLP;
  * HVPs Lanczos needs for the top eigenvalue to 1e-3 (and 1e-6) relative on
    the smoke transformer (target <= 30), next to power iteration's;
  * PyHessian's comparison on a small MLP: top-5 eigenvalues by deflated power
    iteration (PyHessian's defaults: tol 1e-3, <= 100 HVPs each) vs Lanczos
    with full reorthogonalization in 30 HVPs, errors against a dense
    ``eigh``;
  * wall time of the top eigenvalue (Lanczos vs power iteration) and of the
    SLQ density, on the smoke transformer;
  * the training-time probe: HVPs per probe and overhead at one probe per 100
    steps on the smoke transformer (target <= 20 HVPs, <= 10%).
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, repeats=5):
  """Median seconds of ``fn()`` after a warm-up (compile) call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def setup(config):
  """``(run, state)``: the config built once, and its initialization."""
  from dynamics import runs
  run = runs.Run(config)
  return run, run.init_state()


def trained(config, steps):
  """Parameters after ``steps`` training steps (curvature of a real run)."""
  run, state = setup(config)
  step_fn = run.train_step
  for t in range(steps):
    state, _ = step_fn(state, jax.tree.map(jnp.asarray,
                                           run.dataset.train_batch(t)))
  return run, state, step_fn


def hvp_cost(loss, params, batch):
  from analysis import hessian as hs
  grad = jax.jit(jax.grad(loss))
  batch_j = jax.tree.map(jnp.asarray, batch)
  g_s = timed(lambda: grad(params, batch_j))
  hvp = hs.hvp_fn(loss, params, [batch])
  h_s = timed(lambda: hvp(params))
  return {'grad_ms': 1e3 * g_s, 'hvp_ms': 1e3 * h_s, 'ratio': h_s / g_s}


def lanczos_convergence(loss, params, batches, exact, num_iters=60):
  """Relative error of the top Ritz value after j HVPs, j = 1..num_iters.

  The Ritz values of the leading j x j block of T_m are exactly those of a
  j-step run from the same start vector, so one run gives the whole curve.
  """
  from analysis import hessian as hs
  from analysis import lanczos as lz
  op = hs.hvp_fn(loss, params, batches)
  run = lz.run_lanczos(op, params, num_iters, key=jax.random.PRNGKey(0))
  errors = []
  for j in range(1, run.num_matvecs + 1):
    theta, _ = lz.tridiagonal_eigh(run.alphas[:j], run.betas[:j - 1])
    errors.append(abs(theta[0] - exact) / abs(exact))
  return np.asarray(errors)


def first_below(errors, tol):
  hits = np.flatnonzero(np.asarray(errors) < tol)
  return int(hits[0]) + 1 if hits.size else None


def power_convergence(loss, params, batches, exact, max_iters=200):
  """Relative error of power iteration's Rayleigh quotient after j HVPs."""
  from analysis import hessian as hs
  from jax.flatten_util import ravel_pytree
  op = hs.hvp_fn(loss, params, batches)
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def history(v):
    def step(v, _):
      v = v / jnp.linalg.norm(v)
      hv = ravel_pytree(op(unravel(v)))[0]
      return hv, jnp.vdot(v, hv)
    return jax.lax.scan(step, v, None, length=max_iters)[1]

  rq = np.asarray(history(jax.random.normal(jax.random.PRNGKey(0), flat.shape)))
  return np.abs(rq - exact) / abs(exact)


def main(argv):
  quick = '--quick' in argv
  from analysis import hessian as hs
  from analysis import probes
  from configs import eos, wsd
  out = {'device': jax.devices()[0].device_kind, 'quick': quick}

  # 1. HVP cost relative to a gradient.
  tconfig = wsd.get_config('smoke')
  trun, tstate, tstep = trained(tconfig, 20 if quick else 200)
  tloss = trun.loss_fn(tstate.model_state)
  tbatches = [trun.dataset.eval_batch(i) for i in range(2)]
  out['hvp_cost'] = {'smoke_transformer': hvp_cost(tloss, tstate.params,
                                                   tbatches[0])}
  econfig = eos.get_config()
  erun, estate = setup(econfig)
  eloss = erun.loss_fn({})
  efull = erun.dataset.full_batch()
  out['hvp_cost']['eos_mlp'] = hvp_cost(eloss, estate.params, efull)
  print('HVP / gradient cost:', {k: round(v['ratio'], 2)
                                 for k, v in out['hvp_cost'].items()},
        flush=True)

  # 2. HVPs to the top eigenvalue (smoke transformer), Lanczos vs power.
  ref, _ = hs.top_eigenpairs(tloss, tstate.params, tbatches, k=1,
                             num_iters=100, tol=1e-7)
  exact = float(ref[0])
  lerr = lanczos_convergence(tloss, tstate.params, tbatches, exact)
  perr = power_convergence(tloss, tstate.params, tbatches, exact)
  out['top_eigenvalue_smoke_transformer'] = {
      'lambda_max': exact,
      'lanczos_hvps_to_1e-3': first_below(lerr, 1e-3),
      'lanczos_hvps_to_1e-6': first_below(lerr, 1e-6),
      'power_hvps_to_1e-3': first_below(perr, 1e-3),
      'power_hvps_to_1e-6': first_below(perr, 1e-6),
      'lanczos_error_after_20': float(lerr[19]),
      'power_error_after_20': float(perr[19])}
  print('top eigenvalue (smoke transformer):',
        out['top_eigenvalue_smoke_transformer'], flush=True)

  # 3. PyHessian's comparison, top-5 of a small MLP against dense eigh.
  mconfig = eos.get_config('smoke')
  mconfig.model.hidden_sizes = (32, 32)
  mconfig.data.num_train = 128
  mconfig.data.batch_size = 128
  mrun, mstate, _ = trained(mconfig, 200)
  mloss = mrun.loss_fn({})
  mbatch = [mrun.dataset.full_batch()]
  from jax.flatten_util import ravel_pytree
  flat, unravel = ravel_pytree(mstate.params)
  dense = jax.jit(jax.hessian(lambda x: mloss(unravel(x), mbatch[0])))(flat)
  w = np.linalg.eigvalsh(np.asarray(dense, np.float64))[::-1]
  top5 = w[np.argsort(-np.abs(w))[:5]]  # Power iteration finds |lambda|.
  top5 = np.sort(top5)[::-1]
  pv, _, pinfo = hs.power_iteration(mloss, mstate.params, mbatch, k=5,
                                    return_info=True)
  lv, _, linfo = hs.top_eigenpairs(mloss, mstate.params, mbatch, k=5,
                                   num_iters=30, tol=None, return_info=True)
  out['pyhessian_comparison_mlp'] = {
      'num_params': int(flat.size), 'exact_top5': top5.tolist(),
      'power_hvps': pinfo['num_hvps'],
      'power_rel_errors': (np.abs(np.asarray(pv) - top5) / np.abs(top5)).tolist(),
      'lanczos_hvps': linfo['num_hvps'],
      'lanczos_rel_errors': (np.abs(np.asarray(lv) - w[:5]) / np.abs(w[:5])).tolist()}
  print('PyHessian comparison (MLP):', out['pyhessian_comparison_mlp'],
        flush=True)

  # 4. Wall time on the smoke transformer (compiled, second call).
  def wall(fn):
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
  out['wall_seconds_smoke_transformer'] = {
      'top_eigenvalue_lanczos': wall(lambda: hs.top_eigenpairs(
          tloss, tstate.params, tbatches, k=1, num_iters=40, tol=1e-4)),
      'top_eigenvalue_power': wall(lambda: hs.power_iteration(
          tloss, tstate.params, tbatches, k=1, max_iters=100, tol=1e-4)),
      'top5_lanczos': wall(lambda: hs.top_eigenpairs(
          tloss, tstate.params, tbatches, k=5, num_iters=40, tol=1e-4)),
      'top5_power': wall(lambda: hs.power_iteration(
          tloss, tstate.params, tbatches, k=5, max_iters=100, tol=1e-4)),
      'density_slq_10x40': wall(lambda: hs.spectral_density(
          tloss, tstate.params, tbatches, num_probes=10, num_iters=40)),
  }
  print('wall seconds (smoke transformer):',
        out['wall_seconds_smoke_transformer'], flush=True)

  # 5. Training-time probe overhead at one probe per 100 steps.
  pconfig = wsd.get_config('smoke')
  pconfig.analysis.sharpness_every = 100
  probe = probes.SharpnessProbe(pconfig)
  state = tstate
  step_s = timed(lambda: tstep(jax.tree.map(jnp.copy, state),
                               jax.tree.map(jnp.asarray,
                                            trun.dataset.train_batch(0)))[1])
  hvps, probe_s, errors = [], [], []
  probe(state, trun)  # Compile.
  for t in range(3 if quick else 6):
    for i in range(100):  # 100 real steps between probes.
      state, _ = tstep(state, jax.tree.map(
          jnp.asarray, trun.dataset.train_batch(1000 + 100 * t + i)))
    state = state.replace(step=jnp.asarray(100 * (t + 1), jnp.int32))
    t0 = time.perf_counter()
    logged = probe(state, trun)
    probe_s.append(time.perf_counter() - t0)
    hvps.append(logged['sharpness_hvps'])
    converged, _ = hs.top_eigenpairs(trun.loss_fn(state.model_state),
                                     state.params, probe.batches(trun), k=1,
                                     num_iters=60, tol=1e-7)
    errors.append(abs(logged['sharpness'] / float(converged[0]) - 1))
  out['probe_smoke_transformer'] = {
      'hvps_per_probe': hvps, 'probe_ms': 1e3 * float(np.median(probe_s)),
      'relative_error_vs_converged': errors,
      'train_step_ms': 1e3 * step_s,
      'overhead_at_1_per_100_steps': float(np.median(probe_s)) / (100 * step_s)}
  print('probe:', out['probe_smoke_transformer'], flush=True)

  os.makedirs('runs', exist_ok=True)
  with open(os.path.join('runs', 'bench_hessian.json'), 'w') as f:
    json.dump(out, f, indent=2)
  print('wrote runs/bench_hessian.json')


if __name__ == '__main__':
  main(sys.argv)
