r"""Benchmark: a 2-D loss slice of ``configs/wsd.py``'s model, end to end.

Command::

  python -m experiments.bench_landscape [--workdir=runs/wsd] [--size=21]

Times `analysis.landscape.checkpoint_slice` -- ``size x size`` points, each
the loss on ``--num_batches`` held-out batches of 32 x 64 tokens, along two
filter-normalized random directions -- through the final checkpoint of
``--workdir`` (a run of ``configs/wsd.py``), or through the initialization
of that config when no workdir is given (the same cost: only the values
differ). Prints the wall time (compilation included, as a user waits for it)
the CPU time of the process (all threads: on a loaded machine the honest
figure) and the points per second, and with ``--results=PATH`` writes them as JSON.
The goal: a 21 x 21 slice in under 2 minutes on 2 CPU cores.
"""

import os
import platform
import tempfile
import time

from absl import flags

from dynamics import cli
from dynamics import outputs  # Also takes the start load (provenance).

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run of configs/wsd.py '
                               '(default: its initialization).')
_SIZE = flags.DEFINE_integer('size', 21, 'Grid points per axis.', lower_bound=1)
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 2, 'Batches per point.',
                                    lower_bound=1)
_CHUNK = flags.DEFINE_integer('chunk_size', 16, 'Points per vmapped call.',
                              lower_bound=1)
_SMOKE = flags.DEFINE_bool('smoke', False, 'configs/wsd.py:smoke (tests).')
_RESULTS = flags.DEFINE_string('results', None, 'Write the figures as JSON.')


def _run_at_init(config, workdir):
  """A recorded run of ``config`` whose only checkpoint is step 0."""
  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint, runs
  os.makedirs(workdir)
  run = runs.Run.create(workdir, config)
  checkpoint.save(workdir, 0, run.init_state(), {'position': 0})
  return runs.Run.open(workdir)


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from absl import logging
  from analysis.landscape import checkpoints
  from configs import wsd
  from dynamics import runs
  logging.set_verbosity(logging.ERROR)
  with tempfile.TemporaryDirectory() as tmp:
    if _WORKDIR.value:
      run = runs.Run.open(_WORKDIR.value)
    else:
      run = _run_at_init(wsd.get_config('smoke' if _SMOKE.value else None),
                         os.path.join(tmp, 'wsd'))
    step = run.resolve_step(None)
    grid = np.linspace(-1.0, 1.0, _SIZE.value)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = checkpoints.checkpoint_slice(
        run, [step], grid, mode='slice2d', num_batches=_NUM_BATCHES.value,
        chunk_size=_CHUNK.value, show_progress=True)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
  points = _SIZE.value ** 2
  num_params = sum(x.size for x in jax.tree.leaves(run.abstract_state.params))
  result = {
      'size': _SIZE.value, 'points': points, 'seconds': seconds,
      'points_per_second': points / seconds, 'cpu_seconds': cpu_seconds, 'num_batches': _NUM_BATCHES.value,
      'chunk_size': _CHUNK.value, 'num_params': int(num_params),
      'workdir': run.workdir if _WORKDIR.value else None, 'step': step,
      'min_loss': report['min_loss'], 'devices': str(jax.devices()),
      'cpu_count': os.cpu_count(), 'machine': platform.machine(),
  }
  print(f"{_SIZE.value}x{_SIZE.value} slice of the {'smoke ' if _SMOKE.value else ''}"
        f"wsd model ({num_params:,} parameters, {_NUM_BATCHES.value} "
        f"batches per point): {seconds:.1f} s wall, {cpu_seconds:.1f} s of "
        f"CPU time, {points / seconds:.1f} points/s")
  if _RESULTS.value:
    outputs.write_json(_RESULTS.value, result, provenance=True)
    print(outputs.wrote([_RESULTS.value]))


if __name__ == '__main__':
  cli.run(main)
