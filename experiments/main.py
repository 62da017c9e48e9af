r"""Trains one config: ``python -m experiments.main --config=configs/wsd.py``.

Flags:
  --config=PATH[:VARIANT]   an ml_collections config file (``:smoke`` shrinks it)
  --config.FIELD=VALUE      override any field declared in dynamics/config_schema.py
  --workdir=DIR             results (default: runs/<config.name>); an existing
                            run there is resumed from its latest checkpoint
  --rerecord_config         a workdir whose checkpoints lost config.json:
                            resume with --config (checked against the
                            checkpoint's shapes) and record it
  --nocompilation_cache     do not use JAX's persistent compilation cache (on
                            by default: a second run of the same shapes, or
                            of its analysis probes, loads what the first
                            compiled; dynamics.compile_cache)

Exit codes: 0 done; 1 a user error (one line naming the field, file or run,
before anything compiles) or a NaN/Inf stop (naming the step and metric; the
last good checkpoint is kept); 75 preempted (SIGTERM: the state was
checkpointed at the next step, re-run the same command to resume; job
scripts requeue on it; before the loop, nothing to save); 130 interrupted
(Ctrl-C). Both hold from the first line (`dynamics.interrupts`).
"""

import os
import sys

if __name__ == '__main__':  # Signals from the first line (before JAX).
  from dynamics import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dynamics import cli, compile_cache  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output directory (default: runs/<config.name>).')
_RERECORD = flags.DEFINE_bool(
    'rerecord_config', False, 'A workdir whose checkpoints lost config.json: '
    'resume with --config (checked against the checkpoint shapes) and record '
    'it.')
_CACHE = compile_cache.define_flag(__name__)


def main(argv):
  del argv
  if _CACHE.value:  # Before anything compiles.
    compile_cache.enable()
  # Imported here so that --help answers before JAX starts.
  from analysis import probes  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint, interrupts, runs, summary, train  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.ERROR)  # orbax logs every save at INFO.
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join('runs', config.name)
  try:
    state = train.train_and_evaluate(config, workdir,
                                     probes=probes.from_config(config),
                                     rerecord_config=_RERECORD.value)
  except train.NonFiniteError as e:
    print(f'Training stopped: {e}', file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)
  except train.Preempted as e:
    print(e)
    sys.exit(cli.EXIT_PREEMPTED)
  except KeyboardInterrupt:
    steps = checkpoint.available_steps(workdir)
    where = (f'the latest checkpoint in {os.path.abspath(workdir)} is step '
             f'{steps[-1]}' if steps else f'no checkpoint yet in {workdir}')
    # os._exit after a flush: the interpreter's shutdown with XLA threads
    # still compiling could segfault (dynamics.interrupts).
    interrupts.exit_now(cli.EXIT_INTERRUPTED, f'\nInterrupted (Ctrl-C); '
                        f'{where}. Re-run the same command to resume.')
  print(summary.summarize(runs.Run.open(workdir), state))


if __name__ == '__main__':
  cli.run(main, required=['config'])
