"""End to end: the main command, kill-and-resume to the same bits, corrupt checkpoints."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import chex

from dynamics import checkpoint, throughput
from dynamics.runs import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, **kwargs)


def _main(workdir, *overrides):
  return _run(['-m', 'experiments.main', '--config=configs/wsd.py:smoke',
               f'--workdir={workdir}', *overrides])


def _params(workdir, step=None):
  return Run.open(str(workdir)).params(step)


def _lines(workdir):
  """metrics.jsonl without the wall-clock throughput (not bitwise)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items()
             if k not in throughput.KEYS} for line in f]


_KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from configs import wsd
    from dynamics import train
    from dynamics.probes import Probe

    class KillAt(Probe):
      """Dies like a preempted machine would: SIGKILL, no cleanup."""
      name, every = 'kill_at', 1
      def __call__(self, state, ctx):
        if int(state.step) == {kill_step}:
          os.kill(os.getpid(), signal.SIGKILL)
        return {{}}

    train.train_and_evaluate(wsd.get_config('smoke'), sys.argv[1],
                             probes=[KillAt()])
''')


def test_main_command_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
  full = tmp_path / 'full'
  done = _main(full)
  assert done.returncode == 0, done.stderr
  assert 'final train loss' in done.stdout and str(full) in done.stdout
  assert 'metrics.jsonl' in done.stdout

  # Killed between checkpoints 20 and 30, with an async save possibly in flight.
  killed = tmp_path / 'killed'
  died = _run(['-c', _KILL_SCRIPT.format(kill_step=25), str(killed)])
  assert died.returncode == -9, died.stderr
  # Step 20's async save may not have finished before the kill: then the
  # run resumes from 10, which must give the same bits all the same.
  latest = max(checkpoint.available_steps(killed))
  assert latest in (10, 20)
  resumed = _main(killed)
  assert resumed.returncode == 0, resumed.stderr
  assert f'resuming from step {latest}' in resumed.stdout

  chex.assert_trees_all_equal(_params(full), _params(killed))  # Bit for bit.
  full_lines, resumed_lines = _lines(full), _lines(killed)
  steps = [r['step'] for r in resumed_lines]
  assert steps == sorted(set(steps)), 'a step was written twice'
  assert full_lines == resumed_lines


def test_corrupt_latest_checkpoint_is_skipped(tmp_path):
  workdir = tmp_path / 'run'
  assert _main(workdir).returncode == 0
  reference = _params(workdir)
  # Corrupt every array file of the latest checkpoint, then ask for more steps.
  files = [f for f in glob.glob(str(workdir / 'checkpoints' / '40' / 'state' / '**'),
                                recursive=True) if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, 'wb') as handle:
      handle.write(b'garbage')
  again = _main(workdir)
  assert again.returncode == 0, again.stderr
  assert 'checkpoint 40 is corrupt' in again.stdout + again.stderr
  assert 'resuming from step 30' in again.stdout
  assert os.path.isdir(workdir / 'corrupt_checkpoints' / '40')
  chex.assert_trees_all_equal(reference, _params(workdir))
