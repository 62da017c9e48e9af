r"""NTK statistics of a run's checkpoints: ``python -m analysis.ntk``.

  python -m analysis.ntk --workdir=runs/lazy_rich --steps=0,500,2000

Flags:
  --workdir=DIR          the run (required)
  --steps=0,500,2000     checkpoint steps (default: all; 0 without a
                         checkpoint is the initialization)
  --num_examples=128     held-out probe examples
  --outputs=last         the kernel over the last position's logits (sequence
                         models; 'all' takes every position: T times dearer)
  --memory_gib=G         memory allowed (default: half of what is free)
  --num_eigs=50          eigenvalues kept per step
  --method=auto          jacobian | ntvp | auto
  --batch_size=N         examples per block (default: what fits in memory)
  --output_dir=DIR       default: WORKDIR/ntk
  --nocompilation_cache  do not use JAX's persistent compilation cache (on
                         by default: dynamics.compile_cache)

Writes ``ntk.json`` (see `analysis.ntk.analyze_checkpoints`) and ``ntk.png``
(spectra, alignment and distances; `analysis.plots.ntk_report`).
"""

import os

from absl import flags
from absl import logging

from analysis.ntk import memory
from dynamics import cli, compile_cache

_CACHE = compile_cache.define_flag(__name__)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (with checkpoints).')
_STEPS = flags.DEFINE_list('steps', [],
                           'Comma-separated checkpoint steps (default: all).')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 128,
                                     'Held-out probe examples.', lower_bound=1)
_NUM_EIGS = flags.DEFINE_integer('num_eigs', 50, 'Eigenvalues kept per step.',
                                 lower_bound=1)
_METHOD = flags.DEFINE_enum('method', 'auto', list(memory.METHODS),
                            'NTK implementation.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Examples per block (default: what fits).',
    lower_bound=1)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Default: WORKDIR/ntk.')
_OUTPUTS = flags.DEFINE_enum(
    'outputs', 'last', ['last', 'all'], "Sequence models: the last position's "
    "logits, or every position's (T times dearer).")
_MEMORY = flags.DEFINE_float('memory_gib', None, 'Memory allowed, in GiB '
                             '(default: half of the free memory).',
                             lower_bound=0.0)


def _steps(values):
  try:
    return [int(s) for s in values] or None
  except ValueError:
    raise cli.UserError(f'--steps={",".join(values)}: expected comma-separated '
                        'integers, e.g. --steps=0,500,2000') from None


def main(argv):
  del argv
  if _CACHE.value:  # Before anything compiles.
    compile_cache.enable()
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  # Deferred: --help answers without loading flax, orbax or matplotlib.
  from analysis import ntk  # pylint: disable=g-import-not-at-top
  from analysis import plots  # pylint: disable=g-import-not-at-top
  from dynamics import outputs  # pylint: disable=g-import-not-at-top
  from dynamics import runs  # pylint: disable=g-import-not-at-top

  steps = _steps(_STEPS.value)
  run = runs.Run.open(_WORKDIR.value)
  out = _OUTPUT_DIR.value or os.path.join(run.workdir, 'ntk')
  outputs.check_writable(out, '--output_dir', default=_OUTPUT_DIR.value is None)
  try:
    report = ntk.analyze_checkpoints(
        run, steps, num_examples=_NUM_EXAMPLES.value, num_eigs=_NUM_EIGS.value,
        method=_METHOD.value, batch_size=_BATCH_SIZE.value,
        outputs=_OUTPUTS.value, progress=True,
        memory_limit=None if _MEMORY.value is None else int(
            _MEMORY.value * 2 ** 30))
  except ntk.NTKMemoryError as e:
    raise cli.UserError(str(e)) from None
  wrote = outputs.write_report(out, 'ntk', report, plots.ntk_report)
  for rec in report['per_step']:
    print(f"step {rec['step']:>7}: top eig {rec['eigenvalues'][0]:.4g}  trace "
          f"{rec['trace']:.4g}  alignment {rec['alignment']:.3f}  distance "
          f"from first {rec['distance_from_first']:.3f}  rel. param change "
          f"{rec['relative_param_change']:.3f}")
  print(wrote)


if __name__ == '__main__':
  cli.run(main, required=['workdir'])
