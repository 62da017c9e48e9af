r"""Trains one config: ``python -m experiments.main --config=configs/wsd.py``.

Flags:
  --config=PATH[:VARIANT]   an ml_collections config file (``:smoke`` shrinks it)
  --config.FIELD=VALUE      override any declared field
  --workdir=DIR             results (default: runs/<config.name>); an existing
                            run there is resumed from its latest checkpoint
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output directory (default: runs/<config.name>).')


def parse_flags(argv):
  """absl's parser, with unknown ``--config.FIELD`` overrides named clearly."""
  from dynamics import config_lib
  try:
    for arg in argv[1:]:
      if arg.startswith('--config.'):
        config_lib.check_field_path(arg[len('--config.'):].split('=')[0])
  except config_lib.ConfigError as e:
    sys.exit(f'Config error: {e}')
  return flags.FLAGS(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Imported here so that --help answers before JAX starts.
  from analysis import probes
  from dynamics import config_lib, sharding, summary, train

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('runs', config.name)
  try:
    state = train.train_and_evaluate(config, workdir,
                                     callbacks=probes.from_config(config))
  except config_lib.ConfigError as e:
    sys.exit(f'Config error: {e}')
  except sharding.DistributedEnvError as e:
    sys.exit(f'Multi-host setup error: {e}')
  except train.NonFiniteError as e:
    sys.exit(f'Training stopped: {e}')
  except train.Preempted as e:
    print(e)
    return
  print(summary.summarize(workdir, state))


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
