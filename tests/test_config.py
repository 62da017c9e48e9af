"""Bad configs fail before anything compiles, naming the field."""

import subprocess
import sys

import pytest

from configs import base, wsd
from dynamics import config_lib


def _smoke():
  return wsd.get_config('smoke')


def test_every_shipped_config_validates():
  config_lib.validate(wsd.get_config())
  config_lib.validate(_smoke())


@pytest.mark.parametrize('field, value, message', [
    ('optimizer.learning_rate', -1.0, 'optimizer.learning_rate=-1.0: must be > 0'),
    ('schedule.decay_fraction', 1.5, 'schedule.decay_fraction=1.5: must be in [0, 1]'),
    ('schedule.warmup_steps', 39, 'schedule.warmup_steps=39: runs into the decay'),
    ('model.name', 'rnn', "model.name='rnn': must be one of"),
    ('data.name', 'imagenet', "data.name='imagenet': must be one of"),
    ('optimizer.name', 'lion', "optimizer.name='lion': must be one of"),
    ('optimizer.b2', 1.0, 'optimizer.b2=1.0: must be in [0, 1)'),
    ('optimizer.sam.rho', -0.1, 'optimizer.sam.rho=-0.1'),
    ('optimizer.reset_interval', 0, 'optimizer.reset_interval=0'),
    ('data.seq_len', 64, 'data.seq_len=64: must be <= model.max_len=32'),
    ('model.num_heads', 3, 'model.num_heads=3: must divide model.d_model=32'),
    ('schedule.decay_shape', 'exp', "schedule.decay_shape='exp'"),
    ('model.init_scale', 0.0, 'model.init_scale=0.0: must be > 0'),
])
def test_invalid_values_name_the_field(field, value, message):
  c = _smoke()
  section, _, key = field.rpartition('.')
  target = c
  for part in section.split('.') if section else ():
    target = target[part]
  with c.ignore_type():
    target[key] = value
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(c)
  assert message in str(err.value)


def test_digits_holdout_size_is_checked():
  from configs import jacobian
  c = jacobian.get_config('smoke')
  c.data.num_eval = 1797
  with pytest.raises(config_lib.ConfigError, match=r'data.num_eval=1797: must be in'):
    config_lib.validate(c)


def test_batch_must_divide_over_devices():
  c = _smoke()
  c.data.batch_size = 6
  with pytest.raises(config_lib.ConfigError, match=r'data.batch_size=6: must be '
                     r'divisible by the device count \(4\)'):
    config_lib.validate(c, device_count=4)


def test_model_and_data_must_fit_together():
  c = _smoke()
  c.model.name = 'mlp'
  with pytest.raises(config_lib.ConfigError, match='needs non-language data'):
    config_lib.validate(c)
  c.data.name = 'teacher_student'
  c.model.norm = 'none'
  c.model.qk_norm = True
  with pytest.raises(config_lib.ConfigError, match='model.qk_norm=True: applies only'):
    config_lib.validate(c)


def test_unknown_fields_and_wrong_types_are_rejected_by_the_locked_config():
  c = _smoke()
  assert base.get_config().is_locked and c.is_locked
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    c.optimizer.learning_rat = 0.1
  with pytest.raises(TypeError):
    c.num_steps = 'abc'


def test_base_declares_every_field_with_a_comment():
  import inspect
  source = inspect.getsource(base)
  for line in source.splitlines():
    stripped = line.strip()
    if ' = ' in stripped and stripped.startswith(('c.', 'm.', 'd.', 'o.', 's.', 'sc.', 'ck.', 'b.', 'mg.', 'a.')) \
        and 'ConfigDict()' not in stripped:
      assert '#' in stripped, f'undocumented field: {stripped}'


def _main(*flags):
  return subprocess.run([sys.executable, '-m', 'experiments.main', *flags],
                        capture_output=True, text=True, timeout=300)


def test_command_line_errors_before_compiling(tmp_path):
  bad_value = _main('--config=configs/wsd.py:smoke',
                    '--config.optimizer.learning_rate=-1', f'--workdir={tmp_path}/a')
  assert bad_value.returncode != 0
  assert 'optimizer.learning_rate=-1.0: must be > 0' in bad_value.stderr
  bad_key = _main('--config=configs/wsd.py:smoke', '--config.optimizer.lr=1',
                  f'--workdir={tmp_path}/b')
  assert bad_key.returncode != 0
  assert 'config.optimizer.lr: unknown field' in bad_key.stderr
  assert 'learning_rate' in bad_key.stderr  # The declared fields are listed.


def test_optional_fields_are_typed_placeholders():
  """A bare None cannot be overridden under lock_config; placeholders can."""
  from ml_collections.config_dict import FieldReference

  def walk(node, prefix=''):
    for key in node.keys():
      value = node[key]
      if hasattr(value, 'keys'):
        yield from walk(value, f'{prefix}{key}.')
      elif value is None:
        yield f'{prefix}{key}', node._fields[key]

  bare = [k for k, raw in walk(base.get_config())
          if not isinstance(raw, FieldReference) and k != 'optimizer.lr_multipliers']
  assert not bare, f'declare these with placeholder(type): {bare}'


def test_optional_fields_parse_from_the_command_line(tmp_path):
  """The branch command of the WSD workflow parses (it fails fast on the
  missing parent, naming the field)."""
  out = _main('--config=configs/wsd.py:smoke', f'--workdir={tmp_path}/c',
              f'--config.branch.from_workdir={tmp_path}/none',
              '--config.branch.from_step=20', '--config.branch.decay_steps=10',
              '--config.optimizer.sam.rho=0.05', '--config.ema.decay=0.9')
  assert out.returncode != 0
  assert (f'config.branch.from_workdir={tmp_path}/none: {tmp_path}/none holds '
          'no run') in out.stderr
