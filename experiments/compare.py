r"""Fair optimizer comparisons: each optimizer's own learning rate, then seeds.

Command:
  python -m experiments.compare --config=configs/wsd.py:smoke \
      --optimizers=adamw,soap --seeds=5 [--weight_decays=0,0.1] [--target=L]

Per optimizer, a log-spaced learning-rate search on the tuning seed
(``--tune_seed``): ``--coarse_points`` rates a factor ``--coarse_factor``
apart around the config's rate (extended while the best is at the grid's
edge), then the two rates half a coarse step either side of the best (weight
decay optionally in the grid); then ``--seeds``
seeds (``tune_seed + 1 ...``, so the tuning seed's luck is not reused) at
each optimizer's best setting, and at AdamW's *untuned* setting (the config's
rate). The report (``<workdir>/compare.json``, ``compare.png``;
`experiments.comparison.report`):

* final eval loss per optimizer, and against tuned AdamW by a paired t-test
  (`analysis.stats.compare`, pairs sharing a seed);
* "reaches the target L in the budget" by the track-3 rule
  ``(L - mean)·√n ≥ z·σ`` (`analysis.stats.reaches_target`); L is ``--target``
  or tuned AdamW's mean final loss;
* steps to the target per seed (first crossing of the eval curve, linear
  between evaluations), and the speedup over tuned AdamW and over untuned
  AdamW with a confidence interval (`analysis.stats.ratio_interval`, paired):
  per seed, the baseline's steps to its own final loss (its budget) over the
  optimizer's steps to that loss; when the optimizer never gets there, the
  baseline's steps to the optimizer's final loss over the budget (< 1).

Runs go through `experiments.sweep` (one workdir per point under
``<workdir>/<optimizer>/``; finished points are skipped, so an interrupted
comparison resumes). ``--emit=slurm|tpu`` writes the job scripts of the
current stage's unfinished points and stops: run the same command again once
they are done to go on to the next stage. `InProcess` runs the same search in
this process with one compiled scan per optimizer (`dynamics.replay`), for
tests and small reproductions; the search, the speedups and the report are
`experiments.comparison`'s.
"""

import os
import sys
from typing import Any, Dict, Optional, Sequence

from absl import flags

from dynamics import cli
from experiments import jobs, sweep
from experiments.comparison import Curve, Pending, compare, overrides

# --config, --workdir, --parallel, --emit and the SLURM / TPU options are
# experiments.sweep's flags.
_OPTIMIZERS = flags.DEFINE_list('optimizers', ['adamw', 'soap'],
                                'Optimizer names (optimizer.name); adamw is '
                                'the baseline and is always included.')
_SEEDS = flags.DEFINE_integer('seeds', 5, 'Seeds at each best setting.')
_TUNE_SEED = flags.DEFINE_integer('tune_seed', 0, 'Seed of the search.')
_COARSE_POINTS = flags.DEFINE_integer('coarse_points', 5, 'Coarse rates.')
_COARSE_FACTOR = flags.DEFINE_float('coarse_factor', 4.0,
                                    'Ratio of neighbouring coarse rates.')
_WEIGHT_DECAYS = flags.DEFINE_list('weight_decays', [],
                                   'Weight decays in the grid (default: the '
                                   "config's).")
_TARGET = flags.DEFINE_float('target', None, 'Target loss (default: tuned '
                             "AdamW's mean final eval loss).")

class SweepEngine:
  """Runs each setting as an `experiments.sweep` point (``experiments.main``
  in a subprocess, or job scripts with ``emit``); the curve is the run's eval
  loss at every evaluation."""

  def __init__(self, config: Any, config_arg: str, overrides: Sequence[str],
               root: str, parallel: int = 1, emit: Optional[str] = None,
               emit_options: Optional[Dict[str, Any]] = None):
    self.__dict__.update(config=config, config_arg=config_arg,
                         overrides=list(overrides), root=root,
                         parallel=parallel, emit=emit,
                         emit_options=emit_options or {})

  def __call__(self, name, settings):
    points = []
    for lr, wd, seed in settings:
      values = overrides(name, lr, wd, seed)
      points += sweep.plan(self.config, self.config_arg, self.overrides,
                           [f'{k}={v}' for k, v in values.items()],
                           os.path.join(self.root, name))
    if self.emit:
      todo = [p for p in points if not sweep.is_finished(p.workdir)]
      if todo:
        paths = jobs.emit(self.emit, todo, self.root, **self.emit_options)
        raise Pending(f'{len(todo)} job scripts in {os.path.dirname(paths[0])}'
                      '; re-run this command once they are done')
    else:
      sweep.run_local(points, self.parallel, log=lambda *_: None)
    return [self._curve(p.workdir) for p in points]

  @staticmethod
  def _curve(workdir: str) -> Curve:
    from dynamics import runs  # pylint: disable=g-import-not-at-top
    records = [r for r in runs.Run.open(workdir).metrics()
               if r.get('eval_loss') is not None]
    if not records:
      raise cli.UserError(f'{workdir}: no eval loss recorded (see sweep.log)')
    loss = [float(r['eval_loss']) for r in records]
    return {'steps': [int(r['step']) for r in records], 'loss': loss,
            'final': loss[-1]}


def main(argv):
  del argv
  from analysis import plots  # pylint: disable=g-import-not-at-top
  from dynamics import outputs  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  config = sweep._CONFIG.value
  config_arg, overrides = sweep._config_args(sys.argv[1:])
  root = os.path.abspath(sweep._WORKDIR.value or
                         os.path.join('runs', 'compare', config.name))
  from dynamics import optim  # pylint: disable=g-import-not-at-top
  for name in _OPTIMIZERS.value:
    if name not in optim.OPTIMIZERS:
      raise cli.UserError(f'--optimizers: {name!r} is not one of '
                          f'{tuple(optim.OPTIMIZERS)}')
  if _SEEDS.value < 1:
    raise cli.UserError('--seeds must be >= 1')
  wds = [float(w) for w in _WEIGHT_DECAYS.value] or [None]
  if sweep._SWEEP.value:
    raise cli.UserError('--sweep: the comparison chooses its own points')
  emit = sweep._EMIT.value
  options = {'repo': os.path.abspath(sweep._REPO_DIR.value or os.getcwd()),
             'python': sweep._PYTHON.value}
  if emit == 'slurm':
    options.update(nodes=sweep._SLURM_NODES.value,
                   tasks=sweep._SLURM_TASKS.value,
                   gpus=sweep._SLURM_GPUS.value,
                   time_limit=sweep._SLURM_TIME.value,
                   partition=sweep._SLURM_PARTITION.value)
  elif emit == 'tpu':
    options.update(tpu=sweep._TPU_NAME.value, zone=sweep._TPU_ZONE.value)
  engine = SweepEngine(config, config_arg, overrides, root,
                       sweep._PARALLEL.value, emit, options)
  seeds = [_TUNE_SEED.value + 1 + i for i in range(_SEEDS.value)]
  try:
    result = compare(engine, _OPTIMIZERS.value,
                     float(config.optimizer.learning_rate), seeds,
                     weight_decays=wds, coarse_points=_COARSE_POINTS.value,
                     coarse_factor=_COARSE_FACTOR.value,
                     tune_seed=_TUNE_SEED.value, target=_TARGET.value)
  except Pending as e:
    print(e)
    return
  result['seeds'] = seeds
  path = os.path.join(root, 'compare.json')
  outputs.write_json(path, result, indent=1)
  png = plots.optimizer_comparison(result, os.path.join(root, 'compare.png'))
  for name, e in result['optimizers'].items():
    s, u = e['speedup_vs_tuned_adamw'], e['speedup_vs_untuned_adamw']
    print(f'{name:>16}: final {e["final"]["mean"]:.4f} ± {e["final"]["std"]:.4f}'
          f'; {e["reaches_target"]["verdict"]} {result["target"]:.4f}'
          f'; speedup vs tuned adamw {s["ratio"]:.2f}x'
          f' [{s["low"]}, {s["high"]}], vs untuned {u["ratio"]:.2f}x'
          + (f'; {e["final_vs_tuned_adamw"]["words"]}'
             if 'final_vs_tuned_adamw' in e else ''))
  print(f'report: {path}\nfigure: {png}')


if __name__ == '__main__':
  cli.run(main, required=['config'])
