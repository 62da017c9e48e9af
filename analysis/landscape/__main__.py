r"""Loss landscapes of a run's checkpoints: ``python -m analysis.landscape``.

  # The line between two runs (or two steps of one), and its barrier:
  python -m analysis.landscape --workdir=runs/a --other_workdir=runs/b \
      --mode=interpolate --alphas=-0.5:1.5:21 [--align]
  # A 21 x 21 slice through the final checkpoint, filter-normalized:
  python -m analysis.landscape --workdir=runs/wsd --mode=slice2d --grid=-1:1:21
  # The plane of three checkpoints (init, constant-rate, decayed branch):
  python -m analysis.landscape --workdir=runs/wsm --steps=0,1600,2000 \
      --other_workdir=runs/wsm_decay --mode=slice2d --directions=plane

Flags:
  --mode          interpolate | slice1d | slice2d
  --steps         interpolate: STEP_A[,STEP_B] (B from --other_workdir, else
                  from --workdir); slices: the centre STEP; plane: three steps
                  (the third from --other_workdir when given). Default: latest.
  --alphas        interpolate: 'start:stop:num' or a comma list (0 and 1
                  included for a barrier)
  --grid          slices: 'start:stop:num' or a comma list, on each axis
  --directions    random (filter-normalized) | hessian (top eigenvectors) |
                  plane (three checkpoints)
  --align         interpolate: weight-match B's units to A's first
  --num_batches   batches per evaluated point
  --out           output directory (default WORKDIR/landscape)
  --nocompilation_cache  do not use JAX's persistent compilation cache
                  (on by default: dynamics.compile_cache)

Writes ``<mode>_<steps>.json`` and its figure (`analysis.plots`).
"""

import os

from absl import flags
from absl import logging

from analysis.landscape import args
from dynamics import cli, compile_cache

MODES = ('interpolate', 'slice1d', 'slice2d')
DIRECTIONS = ('random', 'hessian', 'plane')

_CACHE = compile_cache.define_flag(__name__)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run (with checkpoints).')
_OTHER = flags.DEFINE_string('other_workdir', None,
                             'The second run (interpolate) or the third '
                             'point of a plane.')
_STEPS = flags.DEFINE_list('steps', [], 'Checkpoint steps (see --help).')
_MODE = flags.DEFINE_enum('mode', 'interpolate', list(MODES), 'What to do.')
_ALPHAS = flags.DEFINE_string('alphas', '-0.25:1.25:13',
                              "Interpolation grid: 'start:stop:num' or a list.")
_GRID = flags.DEFINE_string('grid', '-1:1:21',
                            "Slice grid per axis: 'start:stop:num' or a list.")
_DIRECTIONS = flags.DEFINE_enum('directions', 'random', list(DIRECTIONS),
                                'Slice directions.')
_ALIGN = flags.DEFINE_bool('align', False, 'Weight matching before '
                           'interpolating (MLP, CNN, transformer).')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 2, 'Batches per point.',
                                    lower_bound=1)
_CHUNK = flags.DEFINE_integer('chunk_size', 16, 'Points per vmapped call.',
                              lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Random directions.')
_OUT = flags.DEFINE_string('out', None, 'Default: WORKDIR/landscape.')


def parse_grid(text: str, flag: str) -> list:
  """`analysis.landscape.args.parse_grid`, its error a `cli.UserError`."""
  try:
    return args.parse_grid(text, flag)
  except ValueError as e:
    raise cli.UserError(str(e)) from None


def _steps(values, count: int):
  try:
    steps = [int(s) for s in values]
  except ValueError:
    raise cli.UserError(f'--steps={",".join(values)}: expected integers'
                        ) from None
  if len(steps) > count:
    raise cli.UserError(f'--steps={",".join(values)}: --mode={_MODE.value} '
                        f'takes at most {count} steps')
  return steps + [None] * (count - len(steps))


def check_flags():
  """Every flag, checked before a run is opened or anything compiles."""
  mode, directions = _MODE.value, _DIRECTIONS.value
  alphas = parse_grid(_ALPHAS.value, 'alphas') if mode == 'interpolate' else None
  grid = parse_grid(_GRID.value, 'grid') if mode != 'interpolate' else None
  if mode == 'interpolate':
    steps = _steps(_STEPS.value, 2)
    if _OTHER.value is None and (steps[1] is None or steps[0] == steps[1]):
      raise cli.UserError('--steps: interpolating within one run needs two '
                          'different steps (or pass --other_workdir)')
  elif directions == 'plane':
    if mode != 'slice2d':
      raise cli.UserError('--directions=plane needs --mode=slice2d')
    steps = _steps(_STEPS.value, 3)
  else:
    steps = _steps(_STEPS.value, 1)
  if _ALIGN.value and mode != 'interpolate':
    raise cli.UserError('--align: only --mode=interpolate aligns')
  return alphas, grid, steps


def main(argv):
  del argv
  if _CACHE.value:  # Before anything compiles.
    compile_cache.enable()
  logging.set_verbosity(logging.WARNING)
  alphas, grid, steps = check_flags()
  # Deferred: --help and flag errors answer before JAX starts.
  # pylint: disable=g-import-not-at-top
  from analysis import plots
  from analysis import landscape
  from analysis.landscape import checkpoints
  from dynamics import outputs, runs
  run = runs.Run.open(_WORKDIR.value)
  other = runs.Run.open(_OTHER.value) if _OTHER.value else None
  mode = _MODE.value
  try:
    if mode == 'interpolate':
      report = landscape.interpolate(
          run, steps[0], other or run, steps[1], alphas, align=_ALIGN.value,
          num_batches=_NUM_BATCHES.value, chunk_size=_CHUNK.value,
          show_progress=True)
      plot = plots.landscape_curve
    else:
      report = checkpoints.checkpoint_slice(
          run, steps, grid, mode=mode, directions=_DIRECTIONS.value,
          other=other, num_batches=_NUM_BATCHES.value,
          chunk_size=_CHUNK.value, seed=_SEED.value, show_progress=True)
      plot = (plots.landscape_surface if mode == 'slice2d'
              else plots.landscape_curve)
  except ValueError as e:
    raise cli.UserError(str(e)) from None
  out = _OUT.value or os.path.join(run.workdir, 'landscape')
  stem = f"{mode}_{'_'.join(str(s) for s in report['steps'])}"
  if mode != 'interpolate':
    stem += f'_{_DIRECTIONS.value}'
  print(outputs.write_report(out, stem, report, plot))
  if mode == 'interpolate':
    print(f"barrier: train {report['train']['barrier']}, eval "
          f"{report['eval']['barrier']}")


if __name__ == '__main__':
  cli.run(main, required=['workdir'])
