r"""Regenerates one README reproduction: numbers, JSON and figures.

  python -m experiments.reproduce NAME [--size=smoke|full] [--seeds=0,1,2]

NAME is one of `experiments.reproductions.REPRODUCTIONS` (edge_of_stability,
river_valley, lazy_vs_rich, training_jacobian, optimizers_4bit,
lr_sensitivity, mup_coordinate_check, grokking, optimizer_speedups,
rebasin, gradient_noise_scale, lmc_spawn, river_valley_slice). It trains and
measures through the library only, writes ``results/NAME.json`` (full size; smoke size
writes ``results/NAME.smoke.json`` unless ``--out`` says otherwise) with the
config, seeds, package versions, machine and wall time, draws the figures
into ``docs/figures/`` (``--figures``), and prints the README row (the
figures and the row come from ``analysis.results.NAME``, which the notebooks
use too). A results file that exists is replaced, and the command says so.
"""

import importlib
import os
import time

from absl import flags

from dynamics import cli

_SIZE = flags.DEFINE_enum('size', 'full', ['smoke', 'full'],
                          'smoke: seconds, for tests; full: the README numbers.')
_SEEDS = flags.DEFINE_string('seeds', None, 'Comma-separated seeds (default: '
                             'the reproduction\'s own, at least 3 where it '
                             'compares methods).')
_OUT = flags.DEFINE_string('out', None, 'Directory of the results file '
                           '(default: results/).')
_FIGURES = flags.DEFINE_string('figures', None, 'Directory of the figures '
                               '(default: docs/figures at full size, none at '
                               'smoke size).')


def load(name: str):
  """The module that runs reproduction ``name``
  (``experiments.reproductions.NAME``)."""
  from experiments.reproductions import REPRODUCTIONS  # pylint: disable=g-import-not-at-top
  if name not in REPRODUCTIONS:
    raise cli.UserError(f'unknown reproduction {name!r}; choose one of '
                        f'{", ".join(REPRODUCTIONS)}')
  return importlib.import_module(
      f'experiments.reproductions.{REPRODUCTIONS[name]}')


def reader(name: str):
  """The module that reads reproduction ``name``'s numbers: figures, README
  row, claims (``analysis.results.NAME``).

  Example:
    >>> reader('grokking').FIGURES
    ('grokking.png',)
  """
  load(name)  # Checks the name.
  from experiments.reproductions import REPRODUCTIONS  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f'analysis.results.{REPRODUCTIONS[name]}')


def reproduce(name: str, size: str = 'full', seeds=None, out_dir=None,
              figures_dir=None, log=print):
  """Runs reproduction ``name``; writes its results file (and figures).

  Returns:
    The results record (see `analysis.results`).
  """
  from analysis import results  # pylint: disable=g-import-not-at-top
  from dynamics import outputs  # pylint: disable=g-import-not-at-top
  from experiments.reproductions import common  # pylint: disable=g-import-not-at-top
  module = load(name)
  seeds = tuple(module.DEFAULT_SEEDS if seeds is None else seeds)
  start = time.time()
  numbers = module.run(size, seeds, log)
  path = results.result_path(name, size, out_dir)
  record = common.result_record(name, size, seeds, numbers,
                                module.configs(size), time.time() - start)
  log(outputs.wrote([path], common.write_result(path, record)))
  if figures_dir:
    os.makedirs(figures_dir, exist_ok=True)
    for p in reader(name).plot(numbers, figures_dir):
      log(outputs.wrote([p]))
  return record


def main(argv):
  if len(argv) != 2:
    raise cli.UserError('usage: python -m experiments.reproduce NAME '
                        '[--size=smoke|full] [--seeds=0,1,2]')
  from absl import logging  # pylint: disable=g-import-not-at-top
  from analysis import results  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  seeds = None
  if _SEEDS.value:
    try:
      seeds = [int(s) for s in _SEEDS.value.split(',')]
    except ValueError:
      raise cli.UserError(f'--seeds={_SEEDS.value}: comma-separated integers'
                          ) from None
  figures = _FIGURES.value or (results.FIGURES_DIR if _SIZE.value == 'full'
                               else None)
  record = reproduce(argv[1], _SIZE.value, seeds, _OUT.value, figures)
  print(reader(argv[1]).readme_row(record['numbers']))
  print(f"wall time {record['wall_seconds']:.0f} s")


if __name__ == '__main__':
  cli.run(main, allow_args=1)
