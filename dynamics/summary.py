"""The end-of-run summary printed by ``experiments.main``."""

import jax

from dynamics import checkpoint as checkpoint_lib
from dynamics import runs


def summarize(run: runs.Run, state) -> str:
  """Where ``run``'s results are and its final train/eval losses."""
  records = run.metrics()
  last = {}
  for r in records:
    last.update(r)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))

  def fmt(key):
    return f'{last[key]:.4f}' if key in last else 'n/a'

  lines = [
      f'Done: {int(state.step)} steps, {n_params:,} parameters.',
      f'  final train loss {fmt("train_loss")}, eval loss {fmt("eval_loss")}'
      + (f', eval loss (EMA) {fmt("eval_loss_ema")}' if 'eval_loss_ema' in last else ''),
      _throughput(records),
      f'  workdir      {run.workdir}',
      f'  metrics      {run.metrics_path}',
      f'  checkpoints  {checkpoint_lib.checkpoint_dir(run.workdir)} '
      f'(steps {run.steps})',
  ]
  return '\n'.join(line for line in lines if line)


def _throughput(records) -> str:
  """Median tokens/s (examples/s) and MFU over the logged intervals."""
  for key, unit in (('tokens_per_s', 'tokens/s'), ('examples_per_s',
                                                   'examples/s')):
    rates = sorted(r[key] for r in records if key in r)
    if rates:
      break
  else:
    return ''
  mfus = sorted(r['mfu'] for r in records if 'mfu' in r)
  mfu = (f'MFU {100 * mfus[len(mfus) // 2]:.2f}%' if mfus else
         'MFU n/a: no peak FLOP/s known for this device (set '
         '--config.throughput.peak_flops)')
  return f'  throughput   {rates[len(rates) // 2]:,.0f} {unit} (median), {mfu}'


def main_record(metrics, config, loss_floor, wall_seconds):
  """The record of one run of ``configs/wsd.py`` from its metrics lines
  (what ``experiments.main_record`` writes: the README's first command)."""
  evals = {m['step']: m['eval_loss'] for m in metrics if 'eval_loss' in m}
  decay_start = round(config.num_steps * (1 - config.schedule.decay_fraction))
  stable = max(s for s in evals if s <= decay_start)
  return {'entropy_rate_nats': loss_floor,
          'stable_end_step': stable, 'eval_loss_stable_end': evals[stable],
          'final_step': max(evals), 'eval_loss_final': evals[max(evals)],
          'decay_fraction': config.schedule.decay_fraction,
          'num_steps': config.num_steps, 'wall_seconds': wall_seconds}
