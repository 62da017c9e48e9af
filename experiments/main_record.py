r"""The README's first command, run and recorded: ``results/wsd_main.json``.

Command (about 2-4 minutes on 2 CPU cores)::

  python -m experiments.main_record [--workdir=runs/wsd_main_record]

Trains ``configs/wsd.py`` exactly as ``python -m experiments.main
--config=configs/wsd.py`` does (in a fresh workdir, so no run of yours is
resumed or overwritten) and writes what the README's "Two commands" section
quotes: the language's entropy rate, the eval loss at the end of the stable
phase and at the end of the decay, the decay fraction, and the wall time,
with versions and `dynamics.provenance`.
"""

import os
import time

from absl import app
from absl import flags

from dynamics import provenance
from dynamics import summary

_WORKDIR = flags.DEFINE_string('workdir', 'runs/wsd_main_record',
                               'A fresh directory for the run.')
_OUT = flags.DEFINE_string('out', 'results/wsd_main.json', 'Results file.')


def main(argv):
  del argv
  provenance.mark_start()
  from configs import wsd  # pylint: disable=g-import-not-at-top
  from dynamics import outputs, runs, train  # pylint: disable=g-import-not-at-top
  from experiments.reproductions import common  # pylint: disable=g-import-not-at-top
  if os.path.exists(_WORKDIR.value):
    raise app.UsageError(f'--workdir={_WORKDIR.value} exists: give a fresh one')
  config = wsd.get_config()
  start = time.perf_counter()
  train.train_and_evaluate(config, _WORKDIR.value)
  wall = time.perf_counter() - start
  run = runs.Run.open(_WORKDIR.value)
  record = summary.main_record(run.metrics(), config, run.dataset.info.loss_floor, wall)
  record.update(command='python -m experiments.main_record',
                config='configs/wsd.py', versions=common.versions())
  print(outputs.wrote([_OUT.value], outputs.write_json(_OUT.value, record,
                                                       provenance=True)))


if __name__ == '__main__':
  app.run(main)
