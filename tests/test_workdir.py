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
