"""dynamics.workdir: which config changes a resume accepts (issue 28 item 1).

``optimizer.grad_accum_steps`` is the same math only without dropout,
BatchNorm and SAM: there each micro-batch draws its own dropout masks, takes
its own batch statistics, or is perturbed on its own (`dynamics.step`), so a
resume that changes it would continue another trajectory.
"""

import pytest

from dynamics import config_schema
from dynamics import runs
from dynamics import workdir as workdir_lib


def _record(**changes):
  config = config_schema.defaults()
  with config.ignore_type():
    for key, value in changes.items():
      node = config
      *path, leaf = key.split('.')
      for p in path:
        node = node[p]
      node[leaf] = value
  return runs.config_record(config)


def test_accumulation_may_change_where_it_is_the_same_math():
  recorded, requested = _record(), _record(**{'optimizer.grad_accum_steps': 2})
  assert workdir_lib.check_resume(recorded, requested, 'w') == {
      'optimizer.grad_accum_steps': (1, 2)}


@pytest.mark.parametrize('field, value', [
    ('model.dropout', 0.1), ('model.norm', 'batchnorm'),
    ('optimizer.sam.rho', 0.05)])
def test_accumulation_is_refused_with_dropout_batchnorm_or_sam(field, value):
  recorded = _record(**{field: value})
  requested = _record(**{field: value, 'optimizer.grad_accum_steps': 2})
  with pytest.raises(workdir_lib.ResumeMismatchError) as err:
    workdir_lib.check_resume(recorded, requested, 'w')
  message = str(err.value)
  assert 'config.optimizer.grad_accum_steps: 1 -> 2' in message
  assert f'config.{field}={value!r}' in message
  assert '\n' not in message


def test_other_allowed_changes_stay_allowed_with_dropout():
  recorded = _record(**{'model.dropout': 0.1})
  requested = _record(**{'model.dropout': 0.1, 'log_every': 3})
  assert workdir_lib.check_resume(recorded, requested, 'w') == {
      'log_every': (20, 3)}


def test_a_file_system_without_flock_is_one_error(tmp_path, monkeypatch):
  """Was a traceback (the lock's OSError, e.g. ENOLCK on some NFS mounts)."""
  import errno
  import fcntl

  def no_flock(*args):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(fcntl, 'flock', no_flock)
  with pytest.raises(workdir_lib.WorkdirError) as err:
    with workdir_lib.open_for_writing(str(tmp_path / 'run')):
      pass
  assert str(err.value).startswith(f'--workdir={tmp_path / "run"}: cannot '
                                   'lock .lock (No locks available)')


def test_the_progress_bar_shows_no_placeholder_before_the_first_log():
  """Was 'loss=nan, lr=0.00e+00' until the first log line (read as a
  diverged run)."""
  from configs import wsd
  from dynamics import loop_utils
  config = wsd.get_config('smoke')
  config.progress, config.log_every = True, 2
  progress = loop_utils.Progress(config, 0, 10)
  try:
    progress.update(2, {})  # The first logged step's values are not in yet.
    assert 'nan' not in str(progress._bar.postfix)
    progress.update(4, {'train_loss': 1.5, 'learning_rate': 0.1})
    assert progress._bar.postfix == 'loss=1.500, lr=1.00e-01'
  finally:
    progress.close()
