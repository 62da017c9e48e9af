r"""Learning-rate sensitivity with and without qk-norm and z-loss.

  python -m experiments.reproduce lr_sensitivity [--size=smoke|full] [--seeds=0,1,2,3,4]

Claim. Wortsman et al. ("Small-scale proxies for large-scale Transformer
training instabilities", 2023): the final loss of a small transformer, as a
function of the learning rate, degrades at high rates through attention-logit
growth (fixed by qk-norm) and output-logit divergence (fixed by the z-loss
``1e-4 log^2 Z``); with both, the range of good rates widens, measured by the
*LR sensitivity* (their Eq. 1)

.. math:: \mathbb{E}_{\eta}\big[\min(\ell(\eta), \ell_0)\big] - \min_\eta \ell(\eta),

the mean over a grid of rates of the final loss (capped at the loss at
initialization ``l_0``) above the best one; lower is more robust.

What runs: `configs/lr_sensitivity.py` (``:sweep`` at full size,
``:smoke_sweep`` at smoke size), the baseline and ``model.qk_norm=True,
loss.z_loss=1e-4``, over a factor-2 grid of peak rates and the seeds (init,
data order and held-out batches). Each variant compiles the library's
`dynamics.step.train_step` once in a ``lax.scan``
(`dynamics.replay.make_scan_train`) and replays it for every rate and seed. Per run: the final eval
cross-entropy (the z-loss term excluded; a non-finite loss counts as
``l_0``), and the instability probes of the final parameters on a held-out
batch (`dynamics.losses.compute_loss` with the per-layer probes: the largest
attention logit over blocks and the mean ``log Z`` of the output). The
sensitivity is computed per seed, and the variants are compared over the
seeds with `results.compare` ("within noise" within two standard errors).
"""

import dataclasses
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import results
from analysis.results.lr_sensitivity import VARIANTS
from configs import lr_sensitivity as lr_sensitivity_config
from dynamics import losses, replay, runs
from experiments.reproductions import common

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
LEARNING_RATES = {'full': tuple(1e-3 * 2 ** k for k in range(10)),
                  'smoke': (3e-3, 3e-2, 30.0)}


def config(size: str, variant: str, seed: int = 0, learning_rate=None):
  """`configs/lr_sensitivity.py` for one variant and seed."""
  c = lr_sensitivity_config.get_config('smoke_sweep' if size == 'smoke'
                                       else 'sweep')
  c.seed = int(seed)
  c.model.qk_norm = VARIANTS[variant]['qk_norm']
  c.loss.z_loss = VARIANTS[variant]['z_loss']
  if learning_rate is not None:
    c.optimizer.learning_rate = float(learning_rate)
  return c


def configs(size: str) -> Dict[str, Any]:
  return {v: runs.config_record(config(size, v)) for v in VARIANTS}


def sensitivity(final_losses: Sequence[float], loss0: float) -> float:
  """Wortsman et al.'s LR sensitivity of one curve of final losses over the
  grid: ``mean(min(l, l0)) - min(l)``, a non-finite loss counting as ``l0``.

  Example:
    >>> round(sensitivity([3.0, 2.0, 2.5, float('nan')], loss0=4.0), 6)
    0.875
  """
  x = np.asarray(final_losses, np.float64)
  x = np.minimum(np.where(np.isfinite(x), x, loss0), loss0)
  return float(x.mean() - x.min())


def _run_variant(size: str, variant: str, seeds: Sequence[int],
                 rates: Sequence[float], log) -> Dict[str, Any]:
  run0 = runs.Run(config(size, variant, seeds[0]))
  train = replay.make_scan_train(run0)
  probes = jax.jit(lambda p, s, b: _probes_arrays(run0, p, s, b))
  key = 'cross_entropy' if VARIANTS[variant]['z_loss'] else 'loss'
  out = {repr(float(r)): {'eval_loss': [], 'attn_logit_max': [], 'log_z': []}
         for r in rates}
  for seed in seeds:
    run = run0 if seed == seeds[0] else runs.Run(config(size, variant, seed))
    state0 = run.init_state()
    batches = jax.tree.map(jnp.asarray, replay.stacked_batches(
        run.dataset, run.config.num_steps))
    probe_batch = jax.tree.map(jnp.asarray, run.probe_batches(1)[0])
    for lr in rates:
      lrs = common.lr_table(config(size, variant, seed, lr))
      state, _ = train(state0, batches, lrs)
      ev = run.evaluate(state.params, state.model_state,
                        eval_fn=run0.eval_step)[key]
      p = {k: float(v) for k, v in probes(state.params, state.model_state,
                                          probe_batch).items()}
      rec = out[repr(float(lr))]
      rec['eval_loss'].append(float(ev) if np.isfinite(ev) else None)
      for k in ('attn_logit_max', 'log_z'):
        rec[k].append(p[k] if np.isfinite(p[k]) else None)
      log(f'{variant} lr {lr:g} seed {seed}: eval {ev:.4f}, max attention '
          f"logit {p['attn_logit_max']:.1f}, log Z {p['log_z']:.2f}")
  return out


def _probes_arrays(run, params, model_state, batch):
  options = dataclasses.replace(run.options, log_per_layer=True)
  _, (_, metrics) = losses.compute_loss(run.model, params, model_state, batch,
                                        jax.random.PRNGKey(0), options,
                                        train=True)
  attn = jnp.stack([v for k, v in metrics.items()
                    if k.startswith('layers/attn_logit_max/')])
  return {'attn_logit_max': jnp.max(attn), 'log_z': metrics['output_log_z']}


def run(size: str, seeds: Sequence[int], log=print) -> Dict[str, Any]:
  seeds = [int(s) for s in seeds]
  rates = LEARNING_RATES[size]
  sweep = {v: _run_variant(size, v, seeds, rates, log) for v in VARIANTS}
  c = config(size, 'baseline')
  loss0 = float(np.log(c.data.vocab_size))
  return summarize(sweep, rates, seeds, {
      'loss_at_init': loss0, 'num_steps': int(c.num_steps),
      'warmup_steps': int(c.schedule.warmup_steps),
      'schedule': c.schedule.name, 'batch_size': int(c.data.batch_size),
      'loss_floor': float(runs.Run(c).dataset.info.loss_floor)})


def summarize(sweep: Dict[str, Any], rates: Sequence[float],
              seeds: Sequence[int], setup: Dict[str, Any]) -> Dict[str, Any]:
  """Per variant: loss vs rate (mean ± std), sensitivity per seed; the
  comparison of the variants' sensitivities."""
  keys = [repr(float(r)) for r in rates]
  loss0 = setup['loss_at_init']
  summary = {}
  for v, s in sweep.items():
    per_seed = [sensitivity([np.nan if s[k]['eval_loss'][i] is None
                             else s[k]['eval_loss'][i] for k in keys], loss0)
                for i in range(len(seeds))]
    capped = {k: [loss0 if x is None else min(x, loss0)
                  for x in s[k]['eval_loss']] for k in keys}
    means = {k: float(np.mean(capped[k])) for k in keys}
    best = min(keys, key=means.get)
    summary[v] = {'sensitivity': results.mean_std(per_seed),
                  'loss': {k: results.mean_std(capped[k]) for k in keys},
                  'best_rate': float(best), 'best_loss': results.mean_std(
                      capped[best])}
  names = list(VARIANTS)
  comparison = results.compare(summary[names[1]]['sensitivity']['values'],
                              summary[names[0]]['sensitivity']['values'])
  best_comparison = results.compare(summary[names[1]]['best_loss']['values'],
                                   summary[names[0]]['best_loss']['values'])
  return {'learning_rates': [float(r) for r in rates], 'setup': setup,
          'sweep': sweep, 'summary': summary,
          'sensitivity_comparison': comparison,
          'best_loss_comparison': best_comparison}
