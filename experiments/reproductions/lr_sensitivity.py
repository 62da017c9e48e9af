r"""Learning-rate sensitivity with and without qk-norm and z-loss.

  python -m experiments.reproduce lr_sensitivity [--size=smoke|full] [--seeds=0,1,2]

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
seeds with `common.compare` ("within noise" within two standard errors).
"""

import dataclasses
import os
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from analysis import plots
from configs import lr_sensitivity as lr_sensitivity_config
from dynamics import losses, replay, runs
from experiments.reproductions import common

FIGURES = ('lr_sensitivity.png',)
DEFAULT_SEEDS = (0, 1, 2)
VARIANTS = {'baseline': {'qk_norm': False, 'z_loss': 0.0},
            'qk-norm + z-loss': {'qk_norm': True, 'z_loss': 1e-4}}
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
  return {v: common.config_record(config(size, v)) for v in VARIANTS}


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
    summary[v] = {'sensitivity': common.mean_std(per_seed),
                  'loss': {k: common.mean_std(capped[k]) for k in keys},
                  'best_rate': float(best), 'best_loss': common.mean_std(
                      capped[best])}
  names = list(VARIANTS)
  comparison = common.compare(summary[names[1]]['sensitivity']['values'],
                              summary[names[0]]['sensitivity']['values'])
  best_comparison = common.compare(summary[names[1]]['best_loss']['values'],
                                   summary[names[0]]['best_loss']['values'])
  return {'learning_rates': [float(r) for r in rates], 'setup': setup,
          'sweep': sweep, 'summary': summary,
          'sensitivity_comparison': comparison,
          'best_loss_comparison': best_comparison}


def verdict(comparison: Dict[str, Any], lower: str, higher: str) -> str:
  """'within noise', ``lower`` or ``higher`` for a `common.compare` of the
  qk-norm + z-loss variant minus the baseline; no verdict from one seed."""
  return common.verdict(comparison, lower, higher)


def conclusion(numbers: Dict[str, Any]) -> str:
  """The sentence the README and the notebook print."""
  s, (base, fixed) = numbers['summary'], list(VARIANTS)
  sens = verdict(numbers['sensitivity_comparison'],
                 'qk-norm + z-loss less sensitive',
                 'qk-norm + z-loss more sensitive')
  best = verdict(numbers['best_loss_comparison'], 'qk-norm + z-loss lower',
                 'baseline lower')
  ms = common.fmt_mean_std
  return (f"LR sensitivity {ms(s[base]['sensitivity'])} (baseline) vs "
          f"{ms(s[fixed]['sensitivity'])} (qk-norm + z-loss): {sens}; best "
          f"final loss {ms(s[base]['best_loss'])} at LR "
          f"{s[base]['best_rate']:g} vs {ms(s[fixed]['best_loss'])} at LR "
          f"{s[fixed]['best_rate']:g} ({best})")


def report_lines(numbers: Dict[str, Any]) -> List[str]:
  """The notebook's table (final loss per variant and rate, capped at the
  loss at init) and conclusion, every number formatted from ``numbers``."""
  lines = []
  for v in VARIANTS:
    s, sw = numbers['summary'][v], numbers['sweep'][v]
    for r in numbers['learning_rates']:
      k = repr(r)
      blown = sum(x is None or x >= numbers['setup']['loss_at_init']
                  for x in sw[k]['eval_loss'])
      attn = [x for x in sw[k]['attn_logit_max'] if x is not None]
      lines.append(
          f"{v:>16} LR {r:<8g} final eval loss "
          f"{common.fmt_mean_std(s['loss'][k]):>15} (capped runs {blown}), "
          'max attention logit '
          + (f'{max(attn):.3g}' if attn else 'not finite'))
    lines.append(f"{v:>16} LR sensitivity "
                 f"{common.fmt_mean_std(s['sensitivity'])}")
  lines.append(conclusion(numbers) + '.')
  return lines


def max_attention_logit(numbers: Dict[str, Any], variant: str) -> float:
  """The largest attention logit of any finished run of ``variant``."""
  sw = numbers['sweep'][variant]
  return max(x for k in sw for x in sw[k]['attn_logit_max'] if x is not None)


def readme_row(numbers: Dict[str, Any]) -> str:
  rates, setup = numbers['learning_rates'], numbers['setup']
  n_seeds = numbers['summary']['baseline']['sensitivity']['n']
  base, fixed = VARIANTS
  return ('| ![LR sensitivity](docs/figures/lr_sensitivity.png) | Final eval '
          f'loss vs peak learning rate ({rates[0]:g} to {rates[-1]:g}, factor '
          f"2; {n_seeds} seeds; {setup['num_steps']} steps of the 2-layer GPT, "
          '`python -m experiments.reproduce lr_sensitivity`), with and without '
          f'qk-norm + z-loss (Wortsman et al. 2023): {conclusion(numbers)}. '
          'The largest attention logit of the final parameters reaches '
          f'{max_attention_logit(numbers, base):.2g} without qk-norm, '
          f'{max_attention_logit(numbers, fixed):.2g} with it. |')


def claims(numbers: Dict[str, Any]) -> Dict[str, bool]:
  """The paper's claim (lower sensitivity beyond noise), and the shape of
  the curve any sweep must show: high rates end worse than the best."""
  s = numbers['summary']
  c = numbers['sensitivity_comparison']
  keys = [repr(r) for r in numbers['learning_rates']]
  return {
      'qk_norm_z_loss_less_sensitive': c['verdict'] == 'a lower',
      'largest_rate_worse_than_best': all(
          s[v]['loss'][keys[-1]]['mean'] > s[v]['best_loss']['mean'] + 0.1
          for v in s)}


def plot(numbers: Dict[str, Any], figures_dir: str) -> List[str]:
  """Final eval loss, the largest attention logit and ``log Z`` vs rate."""
  rates = numbers['learning_rates']
  keys = [repr(r) for r in rates]
  fig, axes = plots.figure(3, width=4.4, height=3.6)
  for v in VARIANTS:
    s, sw = numbers['summary'][v], numbers['sweep'][v]
    axes[0].errorbar(rates, [s['loss'][k]['mean'] for k in keys],
                     yerr=[s['loss'][k]['std'] for k in keys], fmt='o-',
                     capsize=3, label=f"{v} (sensitivity "
                     f"{s['sensitivity']['mean']:.3f})")
    for ax, name in ((axes[1], 'attn_logit_max'), (axes[2], 'log_z')):
      vals = [np.nanmean([np.nan if x is None else x for x in sw[k][name]])
              for k in keys]
      ax.plot(rates, vals, 'o-', label=v)
  axes[0].axhline(numbers['setup']['loss_at_init'], color='gray', ls=':',
                  lw=0.8, label='loss at init')
  axes[0].set_title('final eval loss (mean ± std over seeds)')
  axes[1].set_title('largest attention logit (final params)')
  axes[2].set_title('mean log Z of the output (final params)')
  for ax in axes:
    ax.set_xscale('log')
    ax.set_xticks(rates, [f'{r:g}' for r in rates], rotation=45)
    ax.minorticks_off()
    ax.set_xlabel('peak learning rate')
    ax.legend(fontsize=7)
  axes[1].set_yscale('log')
  return [plots.save(fig, os.path.join(figures_dir, FIGURES[0]))]
