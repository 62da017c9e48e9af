"""A run directory that cannot be silently wrecked.

Resumes that would change the trajectory are refused (and checkpoints of a
differently shaped state are not "corrupt"); one writer per workdir; merges
never write into another run; preemption exits with its own code; user
errors are one line. One trained smoke run (module fixture) is copied into
each test that needs a finished run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import checkpoint, cli, config_lib, runs, train  # noqa: E402
from dynamics import workdir as workdir_lib  # noqa: E402
from dynamics.probes import Probe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**changes):
  c = wsd.get_config('smoke')
  c.num_steps, c.eval_every, c.eval_batches = 12, 6, 1
  c.checkpoint.every_steps = 6
  c.checkpoint.async_save = False
  c.model.num_layers = 1
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reliability') / 'run')
  train.train_and_evaluate(small_config(), workdir)
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
  target = str(tmp_path / 'run')
  shutil.copytree(finished, target)
  return target


def _snapshot(workdir):
  """Every file's bytes under ``workdir`` (what a refused resume must keep)."""
  out = {}
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(dirpath, f)
      with open(path, 'rb') as handle:
        out[os.path.relpath(path, workdir)] = handle.read()
  return out


def _cmd(*args, timeout=300, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


# 1-2. What a resume accepts and refuses.

def test_the_resume_lists_are_decided_field_by_field():
  allowed = ['name', 'log_every', 'eval_every', 'eval_batches', 'progress',
             'log_per_layer', 'stop_on_nonfinite', 'checkpoint.every_steps',
             'checkpoint.max_to_keep', 'checkpoint.async_save',
             'analysis.sharpness_every', 'merge.window', 'mesh.fsdp',
             'throughput.peak_flops', 'optimizer.grad_accum_steps',
             'model.remat']
  refused = ['seed', 'num_steps', 'model.d_model', 'data.batch_size',
             'loss.z_loss', 'optimizer.learning_rate', 'optimizer.sam.rho',
             'schedule.decay_fraction', 'ema.decay', 'branch.from_step',
             'model.position', 'data.path', 'some.future_field']
  assert [f for f in allowed if not workdir_lib.resumable(f)] == []
  assert [f for f in refused if workdir_lib.resumable(f)] == []


@pytest.mark.parametrize('field, value', [('model.d_model', 64),
                                          ('num_steps', 24),
                                          ('optimizer.learning_rate', 1e-2)])
def test_a_resume_that_changes_the_trajectory_is_refused(run_copy, field, value):
  before = _snapshot(run_copy)
  with pytest.raises(workdir_lib.ResumeMismatchError) as err:
    train.train_and_evaluate(small_config(**{field: value}), run_copy)
  assert f'config.{field}:' in str(err.value) and 'new --workdir' in str(err.value)
  assert 'branch' in str(err.value)
  assert _snapshot(run_copy) == before  # Nothing moved, wiped or rewritten.


def test_a_differently_shaped_checkpoint_is_a_mismatch_not_corruption(run_copy):
  os.remove(os.path.join(run_copy, 'config.json'))  # No record to compare.
  before = _snapshot(run_copy)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='model|shape'):
    train.train_and_evaluate(small_config(**{'model.d_model': 64}), run_copy,
                             rerecord_config=True)
  assert not os.path.exists(os.path.join(run_copy, 'corrupt_checkpoints'))
  assert _snapshot(run_copy) == before


def test_checkpoints_without_config_json_are_refused_with_the_way_out(
    run_copy):
  """Issue 28 item 9: the resume check was skipped (a changed learning rate
  was accepted) and config.json was never rewritten."""
  os.remove(os.path.join(run_copy, 'config.json'))
  before = _snapshot(run_copy)
  changed = small_config(**{'optimizer.learning_rate': 1e-2})
  with pytest.raises(workdir_lib.WorkdirError) as err:
    train.train_and_evaluate(changed, run_copy)
  assert 'no config.json' in str(err.value)
  assert '--rerecord_config' in str(err.value) and '\n' not in str(err.value)
  assert _snapshot(run_copy) == before
  train.train_and_evaluate(small_config(), run_copy, rerecord_config=True)
  assert runs.Run.open(run_copy).config.optimizer.learning_rate == (
      small_config().optimizer.learning_rate)


def test_a_resume_may_change_logging_and_records_it(run_copy):
  config = small_config(**{'log_every': 3, 'checkpoint.every_steps': 4})
  train.train_and_evaluate(config, run_copy)  # Finished: resumes at 12.
  with open(os.path.join(run_copy, 'resumes.jsonl')) as f:
    (entry,) = [json.loads(line) for line in f]
  assert entry['step'] == 12
  assert entry['changed'] == {'log_every': {'from': 5, 'to': 3},
                              'checkpoint.every_steps': {'from': 6, 'to': 4}}
  assert runs.Run.open(run_copy).config.log_every == 3  # config.json follows.


# 3. One writer per workdir.

def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match=rf'pid {os.getpid()} on host '):
      train.train_and_evaluate(small_config(), str(tmp_path))
  assert not os.path.exists(tmp_path / 'config.json')


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; '
       'from dynamics.workdir import WorkdirLock; '
       f'lock = WorkdirLock({str(tmp_path)!r}).acquire(); '
       'print("locked", flush=True); '
       'time.sleep(600)'], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(workdir_lib.WorkdirBusyError):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  holder.kill()  # kill -9: no cleanup ran.
  holder.wait()
  with workdir_lib.WorkdirLock(str(tmp_path)):
    pass


# 4. Merges never write into another run.

def test_a_merge_into_another_run_is_refused(finished, tmp_path):
  from experiments import merge
  other = str(tmp_path / 'other')
  shutil.copytree(finished, other)
  before = _snapshot(other)
  with pytest.raises(cli.UserError, match='holds another run'):
    merge.merge_and_evaluate(finished, window=12, shape='linear', interval=6,
                             output=other)
  assert _snapshot(other) == before


# 5. Validation gaps: one error naming the field, before the workdir exists.

@pytest.mark.parametrize('field, value, message', [
    ('model.num_heads', 0, 'model.num_heads=0: must be an integer > 0'),
    ('model.d_model', 0, 'model.d_model=0: must be'),
    ('model.num_layers', 0, 'model.num_layers=0: must be'),
    ('seed', -1, 'seed=-1: must be an integer >= 0'),
    ('data.seq_len', 0, 'data.seq_len=0: must be'),
    ('model.max_len', 0, 'model.max_len=0: must be'),
    ('schedule.budgets', ('abc',), 'schedule.budgets='),
    ('checkpoint.keep_steps', (5, 'abc'), 'checkpoint.keep_steps='),
    # Issue 28 item 6: each passed validation (then a traceback, or a wrong
    # run: final_value=-1 trained by gradient ascent, sharpness_data=foo as
    # eval; inf only stopped later as a NaN).
    ('analysis.sharpness_data', 'foo', "sharpness_data='foo': must be one of"),
    ('schedule.final_value', -1.0, 'final_value=-1.0: must be >= 0'),
    ('schedule.final_value', float('nan'), 'final_value=nan: must be a finite'),
    ('optimizer.learning_rate', float('inf'), 'learning_rate=inf: must be a '
     'finite number > 0'),
    ('model.init_scale', float('inf'), 'init_scale=inf: must be a finite'),
    ('model.output_scale', float('inf'), 'output_scale=inf: must be a finite'),
    ('optimizer.sam.rho', float('inf'), 'sam.rho=inf: must be a finite'),
    ('analysis.sharpness_batches', 0, 'sharpness_batches=0: must be'),
    ('analysis.ntk_num_examples', 0, 'ntk_num_examples=0: must be'),
    ('seed', 99999999999999999999, 'seed=99999999999999999999: must be'),
    ('model.attention_impl', 'cudnn', "attention_impl='cudnn': needs a CUDA"),
    ('data.name', 'huggingface', "needs the optional package 'datasets'"),
])
def test_bad_values_fail_before_the_workdir_exists(tmp_path, field, value,
                                                   message):
  config = small_config()
  with config.ignore_type():
    small = config
    *path, leaf = field.split('.')
    for p in path:
      small = small[p]
    small[leaf] = value
  workdir = tmp_path / 'never'
  with pytest.raises(config_lib.ConfigError, match=message.replace('(', r'\(')):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_missing_text_dir_is_a_config_error(tmp_path):
  config = small_config(**{'data.name': 'bytes', 'data.text_dir': '/nonexistent'})
  with pytest.raises(config_lib.ConfigError, match='data.text_dir'):
    train.train_and_evaluate(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


@pytest.mark.parametrize('changes, message', [
    ({'data.text_dir': 'EMPTY'}, 'text_dir=.*holds 0 bytes'),
    ({'data.max_bytes': 10}, 'max_bytes=10: reads too little text'),
    ({'optimizer.name': 'stable_spam',
      'optimizer.stable_spam.beta1_decay_steps': 0}, 'beta1_decay_steps=0'),
    ({'optimizer.name': 'stable_spam',
      'optimizer.stable_spam.beta1_decay_min': 2.0}, 'beta1_decay_min=2.0'),
    ({'optimizer.name': 'adamp', 'optimizer.adamp.wd_ratio': -1.0},
     'wd_ratio=-1.0: must be >= 0'),
    ({'optimizer.name': 'sgdp', 'optimizer.sgdp.dampening': -1.0},
     r'dampening=-1.0: must be in \[0, 1\]'),
])
def test_malformed_values_of_one_section_fail_before_the_workdir(
    tmp_path, changes, message):
  """Issue 28 item 6: values needing another field set first (bytes data,
  an optimizer's own section)."""
  if changes.get('data.text_dir') == 'EMPTY':
    (tmp_path / 'empty').mkdir()
    changes = {'data.text_dir': str(tmp_path / 'empty')}
  if 'optimizer.name' not in changes:
    changes = {'data.name': 'bytes', 'model.vocab_size': None, **changes}
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(small_config(**changes), str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


# 6-7. Exit codes and one-line errors of the command.

def _main(*args, **kwargs):
  return _cmd('-m', 'experiments.main', *args, **kwargs)


@pytest.mark.parametrize('args, message', [
    (['--config=configs/wsd.py:smoke', '--config.num_steps=abc'],
     "Config error: config.num_steps='abc'"),
    (['--config=configs/nosuch.py'], 'no such config file'),
    (['--config=configs/wsd.py:nosuch'], "unknown variant 'nosuch'"),
    ([], '--config is required'),
    (['--config=configs/wsd.py:smoke', '--workdir=/proc/version'],
     'a file is in the way'),
    (['experiments.merge', '--workdir=/nonexistent'], 'holds no run'),
    (['analysis.ntk', '--workdir=/nonexistent'], 'holds no run'),
])
def test_user_errors_are_one_line(args, message):
  module = 'experiments.main'
  if args and not args[0].startswith('--'):
    module, args = args[0], args[1:]
  out = _cmd('-m', module, *args)
  assert out.returncode == cli.EXIT_USER_ERROR, out.stderr
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], out.stderr


def _signal_run(tmp_path, sig):
  """Starts a long smoke run, sends ``sig`` once it trains; returns output."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.main', '--config=configs/wsd.py:smoke',
       '--config.num_steps=100000', '--config.checkpoint.every_steps=50',
       '--config.eval_every=100000', f'--workdir={tmp_path}/run'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert 'starting' in proc.stdout.readline()
  os.kill(proc.pid, sig)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


def test_sigterm_checkpoints_and_exits_with_the_preemption_code(tmp_path):
  code, out, _ = _signal_run(tmp_path, signal.SIGTERM)
  assert code == cli.EXIT_PREEMPTED == 75
  assert 're-run the same command to resume' in out
  assert checkpoint.available_steps(tmp_path / 'run')  # It saved.


def test_ctrl_c_says_where_it_stopped(tmp_path):
  code, _, err = _signal_run(tmp_path, signal.SIGINT)
  assert code == cli.EXIT_INTERRUPTED
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and 'Interrupted (Ctrl-C)' in lines[0], err
  assert 'Re-run the same command to resume' in lines[0]


def test_emitted_slurm_script_requeues_on_the_preemption_code(tmp_path):
  from experiments import jobs, sweep
  points = sweep.plan(wsd.get_config('smoke'), 'configs/wsd.py:smoke', [],
                      ['seed=0'], str(tmp_path))
  (script, _) = jobs.emit('slurm', points, str(tmp_path), repo=ROOT, nodes=1,
                          tasks=1, gpus=1, time_limit='1:00:00', partition=None)
  text = open(script).read()
  assert f'if [ "$code" -eq {cli.EXIT_PREEMPTED} ]; then' in text
  assert 'scontrol requeue "$SLURM_JOB_ID"' in text


# 9. Smaller guarantees.

class _NaNAt(Probe):
  name, every = 'nan_at', 1

  def __call__(self, state, run):
    return {'probe': float('nan')} if int(state.step) == 3 else {}


def test_a_nan_from_a_probe_or_eval_stops_the_run(tmp_path):
  with pytest.raises(train.NonFiniteError, match='non-finite probe=nan at step 3'):
    train.train_and_evaluate(small_config(), str(tmp_path), probes=[_NaNAt()])


def test_tensorboard_is_trimmed_on_resume(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator

  class StopAt(Probe):
    name, every = 'stop_at', 1

    def __call__(self, state, run):
      if int(state.step) == 9:
        raise KeyboardInterrupt  # Dies between checkpoints 6 and 12.
      return {}

  workdir = str(tmp_path / 'run')
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(small_config(**{'log_every': 1}), workdir,
                             probes=[StopAt()])
  train.train_and_evaluate(small_config(**{'log_every': 1}), workdir)
  acc = event_accumulator.EventAccumulator(
      os.path.join(workdir, 'tensorboard'), size_guidance={'tensors': 0})
  acc.Reload()
  steps = [e.step for e in acc.Tensors('train_loss')]
  assert steps == list(range(1, 13))  # Steps 7-9 of the first attempt: once.


class _StopAt(Probe):
  """A probe that dies (Ctrl-C) at ``step``, between two checkpoints."""
  name = 'stop_at'
  every = 1

  def __init__(self, step):
    self.step = step

  def __call__(self, state, run):
    if int(state.step) == self.step:
      raise KeyboardInterrupt
    return {}


@pytest.mark.parametrize('tail', [b'{"step": 10, "train_lo', b'\0' * 64],
                         ids=['partial line', 'NUL padding'])
def test_a_torn_metrics_tail_does_not_block_the_resume(tmp_path, capfd, tail):
  workdir = str(tmp_path / 'run')
  config = small_config(**{'log_every': 1})
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir, probes=[_StopAt(9)])
  run = runs.Run.open(workdir)
  with open(run.metrics_path, 'ab') as f:  # What a node or NFS crash leaves.
    f.write(tail)
  capfd.readouterr()
  train.train_and_evaluate(config, workdir)
  warnings = [l for l in capfd.readouterr().err.splitlines() if 'WARNING' in l]
  assert warnings == [f'WARNING: {run.metrics_path}: dropped an unreadable '
                      'tail from line 10 on (a partial write or NUL padding, '
                      'as a crash can leave)']
  assert [m['step'] for m in run.metrics() if 'train_loss' in m] == list(
      range(1, 13))  # Steps 7-9 of the first attempt once; nothing torn.


def test_damaged_metrics_stop_a_resume_in_one_line(run_copy):
  run = runs.Run.open(run_copy)
  with open(run.metrics_path) as f:
    lines = f.readlines()
  lines[1] = lines[1][:10] + '\n'
  with open(run.metrics_path, 'w') as f:
    f.writelines(lines)
  out = _main('--config=configs/wsd.py:smoke', '--config.num_steps=12',
              '--config.eval_every=6', '--config.eval_batches=1',
              '--config.checkpoint.every_steps=6', '--config.model.num_layers=1',
              f'--workdir={run_copy}')
  assert out.returncode == cli.EXIT_USER_ERROR, out.stderr
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f'Error: {run.metrics_path}:2: not a JSON object, yet good lines follow '
      'it (the file was damaged after it was written); repair or remove that '
      'line')


def test_an_empty_step_directory_is_not_a_checkpoint(run_copy):
  os.makedirs(os.path.join(run_copy, 'checkpoints', '50'))
  run = runs.Run.open(run_copy)
  assert run.steps == [6, 12] and int(run.state().step) == 12
  with pytest.raises(TypeError, match=r"step must be an integer, got '12'"):
    run.state('12')


def test_a_sweep_with_a_failed_point_exits_nonzero(tmp_path):
  out = _cmd('-m', 'experiments.sweep', '--config=configs/wsd.py:smoke',
             '--sweep=optimizer.learning_rate=-1', '--config.num_steps=2',
             f'--workdir={tmp_path}')
  assert out.returncode == 1, out.stdout + out.stderr
  assert 'did not finish' in out.stderr
