r"""Trains one config: ``python -m experiments.main --config=configs/wsd.py``.

Flags:
  --config=PATH[:VARIANT]   an ml_collections config file (``:smoke`` shrinks it)
  --config.FIELD=VALUE      override any field declared in configs/base.py
  --workdir=DIR             results (default: runs/<config.name>); an existing
                            run there is resumed from its latest checkpoint

A wrong field or value prints one line naming it and exits 1, before anything
compiles.
"""

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from dynamics import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output directory (default: runs/<config.name>).')


def main(argv):
  del argv
  # Imported here so that --help answers before JAX starts.
  from analysis import probes  # pylint: disable=g-import-not-at-top
  from dynamics import summary, train  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('runs', config.name)
  try:
    state = train.train_and_evaluate(config, workdir,
                                     callbacks=probes.from_config(config))
  except train.NonFiniteError as e:
    sys.exit(f'Training stopped: {e}')
  except train.Preempted as e:
    print(e)
    return
  print(summary.summarize(workdir, state))


if __name__ == '__main__':
  cli.run(main, required=['config'])
