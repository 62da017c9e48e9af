"""Issue 28: output paths, failed saves and startup errors, each one line.

Output paths are checked before anything computes (a workdir that cannot be
made, ``--out`` of an analysis, the JSON next to a run); a checkpoint that
cannot be saved stops training at once, naming a full disk as such; every
``OSError`` and ``TokenDataError`` that reaches a command is one line naming
the path. One tiny run (module fixture) serves the tests that need a run.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import checkpoint, cli, outputs, runs, train  # noqa: E402
from dynamics import workdir as workdir_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = 'x' * 300  # Longer than any file system's name limit (255 bytes).


def tiny_config(**changes):
  c = wsd.get_config('smoke')
  c.num_steps, c.eval_every, c.eval_batches, c.log_every = 8, 8, 1, 1
  c.checkpoint.every_steps, c.checkpoint.async_save = 4, False
  c.model.num_layers, c.progress = 1, False
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('io') / 'run')
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


def _cmd(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _one_line(out):
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == cli.EXIT_USER_ERROR, out.stderr[-2000:]
  assert len(lines) == 1, out.stderr[-2000:]
  return lines[0]


# Output paths, before any compute.

def test_output_paths_are_checked_and_named():
  with pytest.raises(outputs.OutputPathError) as err:
    outputs.check_writable('/proc/nope/out', '--out', default=True)
  assert str(err.value).startswith('--out=/proc/nope/out: cannot write in '
                                   '/proc')
  assert str(err.value).endswith('pass --out=DIR to write elsewhere')
  with pytest.raises(outputs.OutputPathError, match='longer than 255 bytes'):
    outputs.check_writable(f'/tmp/{LONG}', '--output_dir')
  outputs.check_writable('/tmp/a/b/c', '--out')  # Made at write time.


def test_a_workdir_that_cannot_be_made_is_one_error(tmp_path):
  """Was a 30-line OSError (Errno 36 for a long name, 30 read-only)."""
  for bad in (str(tmp_path / LONG), '/proc/nope'):
    with pytest.raises(workdir_lib.WorkdirError) as err:
      train.train_and_evaluate(tiny_config(), bad)
    assert str(err.value).startswith(f'--workdir={bad}: cannot create it (')


def test_analysis_refuses_an_unwritable_out_before_computing(finished):
  """Was: 16 s of compute, then an 18-20-line OSError and the result lost."""
  out = _cmd('-m', 'analysis.hessian', f'--workdir={finished}',
             '--out=/proc/nope', '--k=1', '--num_iters=2')
  line = _one_line(out)
  assert line.startswith('Error: --out=/proc/nope: cannot write in /proc')
  assert 'top' not in out.stdout  # Nothing was computed.


# A failed save stops training at once.

def _failing_save(monkeypatch, fail_at):
  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == fail_at:
      raise OSError(errno.ENOSPC, 'No space left on device',
                    os.path.join(str(self.directory), str(step)))
    return real(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)


def test_a_failed_save_stops_training_at_once_naming_a_full_disk(
    tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  _failing_save(monkeypatch, 4)
  with pytest.raises(checkpoint.CheckpointSaveError) as err:
    train.train_and_evaluate(tiny_config(), workdir)
  message = str(err.value)
  assert message.startswith('checkpoint 4 could not be saved in ')
  assert 'the disk is full (No space left on device)' in message
  assert '\n' not in message
  steps = [r['step'] for r in runs.Run.open(workdir).metrics()]
  assert max(steps) == 4  # Not ~10 steps past the failed save.


def test_a_failed_async_save_stops_training_at_the_next_step(
    tmp_path, monkeypatch):
  """An asynchronous save fails after the loop went on: the loop checks every
  step, so it stops one step later, not at the next save."""
  workdir = str(tmp_path / 'run')
  calls = []
  real = ocp.CheckpointManager.check_for_errors

  def check(self):  # Fails once the save of step 4 has been checked once.
    if 4 in self.all_steps():
      calls.append(True)
      if len(calls) == 2:
        raise OSError(errno.ENOSPC, 'No space left on device', 'checkpoints/4')
    return real(self)
  monkeypatch.setattr(ocp.CheckpointManager, 'check_for_errors', check)
  with pytest.raises(checkpoint.CheckpointSaveError, match='disk is full'):
    train.train_and_evaluate(tiny_config(**{'checkpoint.async_save': True}),
                             workdir)
  steps = [r['step'] for r in runs.Run.open(workdir).metrics()]
  assert max(steps) <= 5


# Errors that reach a command: one line naming the path.

def test_os_errors_are_one_line_naming_the_path_and_a_full_disk():
  assert outputs.describe_os_error(OSError(
      errno.ENOSPC, 'No space left on device', '/runs/a/m.jsonl')) == (
          '/runs/a/m.jsonl: the disk is full (No space left on device)')
  assert outputs.describe_os_error(OSError(
      errno.EROFS, 'Read-only file system', '/ro/x')) == (
          '/ro/x: Read-only file system')


@pytest.mark.parametrize('raised, expected', [
    ("OSError(errno.ENOSPC, 'No space left on device', '/runs/a/m.jsonl')",
     'Error: /runs/a/m.jsonl: the disk is full (No space left on device)'),
    ("__import__('dynamics.data', fromlist=['x']).TokenDataError("
     "'data/tok/meta.json: missing\\nmore')",
     'Error: data/tok/meta.json: missing'),
])
def test_a_command_prints_os_and_token_errors_in_one_line(raised, expected):
  """Was: tracebacks (TokenDataError was not among the user errors)."""
  code = ('import errno, sys\nfrom dynamics import cli\n'
          f'def main(argv):\n  raise {raised}\ncli.run(main)\n')
  assert _one_line(_cmd('-c', code)) == expected


# Signals from the first line of the command.

@pytest.mark.parametrize('sig, code, said', [
    (signal.SIGTERM, cli.EXIT_PREEMPTED, 'Preempted (SIGTERM)'),
    (signal.SIGINT, cli.EXIT_INTERRUPTED, 'Interrupted (Ctrl-C)')])
def test_a_signal_during_startup_exits_with_its_code(tmp_path, sig, code, said):
  """Was: SIGTERM in the first seconds exited 143 (not requeued); Ctrl-C in
  the first half second was swallowed (the run trained to exit 0) or a
  traceback."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.main', '--config=configs/wsd.py:smoke',
       '--config.num_steps=100000', f'--workdir={tmp_path}/run'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # SIGTERM caught: the first line ran (Python catches SIGINT from birth).
  _wait_until_caught(proc.pid, signal.SIGTERM)
  os.kill(proc.pid, sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == code, (proc.returncode, out[-500:], err[-2000:])
  assert said in out + err and 'Traceback' not in err, err[-2000:]
  assert 'starting' not in out  # It stopped before the run began.


def _wait_until_caught(pid, sig, timeout=60):
  """Waits until process ``pid`` catches ``sig`` (its SigCgt mask)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(f'/proc/{pid}/status') as f:
      mask = next(int(l.split()[1], 16) for l in f if l.startswith('SigCgt:'))
    if mask >> (int(sig) - 1) & 1:
      return
    time.sleep(0.005)
  raise AssertionError(f'process {pid} never caught {sig!r}')


# Also seen: a merge output holds one merge.

def test_a_merge_output_holds_one_merge(finished, tmp_path):
  """Was: a second merge at another step overwrote merge.json and appended
  metrics out of order; a merge into the run itself could never succeed."""
  from experiments import merge
  finished = str(shutil.copytree(finished, tmp_path / 'run'))
  out = str(tmp_path / 'merged')
  merge.merge_and_evaluate(finished, window=4, shape='linear', interval=4,
                           step=8, output=out)
  with pytest.raises(cli.UserError, match='holds the merge at step 8; an '
                     'output holds one merge'):
    merge.merge_and_evaluate(finished, window=4, shape='linear', interval=4,
                             step=4, output=out)
  with pytest.raises(cli.UserError, match='is the run being merged'):
    merge.merge_and_evaluate(finished, window=4, shape='linear', interval=4,
                             output=finished)
  assert [r['step'] for r in runs.Run.open(out).metrics()] == [8]
  default = merge.merge_and_evaluate(finished, window=4, shape='linear',
                                     interval=4, step=4)
  assert default['output'].endswith('merged/linear-w4-step4')


# Also seen: analysis.jacobian's flags and its Lanczos-path line.

def test_jacobian_dense_max_is_checked_and_lanczos_gives_no_bulk_share():
  """Was: --dense_max=-5 accepted; on the Lanczos path a "bulk 0.0%" from 40
  extreme singular values where the dense answer is 53.9%."""
  line = _one_line(_cmd('-m', 'analysis.jacobian',
                        '--config=configs/jacobian.py:smoke', '--dense_max=-5'))
  assert line.startswith('Flag error: --dense_max=-5:')
  from analysis.jacobian import report
  split = {'bulk_fraction': 0.5, 'amplified_fraction': 0.25,
           'contracted_fraction': 0.25, 'bulk_tol': 0.1}
  base = {'num_params': 610, 'num_steps': 20, 'seconds_jacobian': 1.0,
          'singular_values': [4.0, 1.0, 1.0, 0.5], 'split': split}
  assert report.spectrum_line({**base, 'dense': True}).endswith(
      'bulk 50.0%, amplified 25.0%, contracted 25.0% (|s-1| <= 0.1)')
  lanczos = report.spectrum_line({**base, 'dense': False})
  assert 'bulk' not in lanczos.replace('no bulk fraction', '')
  assert lanczos.endswith('only the 4 extreme singular values were computed '
                          '(Lanczos), so no bulk fraction; pass '
                          '--dense_max=610 for the dense spectrum')


# Also seen: analysis.hessian says how long it will take.

def test_the_hessian_spectrum_estimates_its_time_first(finished):
  """Was: --num_batches=100000 ran for hours with no estimate."""
  from analysis import hessian
  lines = []
  hessian.checkpoint_spectrum(runs.Run.open(finished), k=1, num_iters=4,
                              num_batches=2, log=lines.append)
  (estimate,) = [l for l in lines if l.startswith('estimate: ')]
  assert estimate.startswith('estimate: the top-1 takes at most 4 HVPs x 2 '
                             'batches, about ')
  assert lines.index(estimate) < [i for i, l in enumerate(lines)
                                  if l.startswith('top-1')][0]
