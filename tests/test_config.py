"""Bad configs fail before anything compiles, naming the field."""

import json
import math
import os
import subprocess
import sys

import pytest

from configs import base, wsd
from dynamics import config_lib, config_migrate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    ('optimizer.name', 'lamb', "optimizer.name='lamb': must be one of"),
    ('optimizer.adamw.b2', 1.0, 'optimizer.adamw.b2=1.0: must be in [0, 1)'),
    ('optimizer.sam.rho', -0.1, 'optimizer.sam.rho=-0.1'),
    ('optimizer.adamw.eps', -1.0, 'optimizer.adamw.eps=-1.0: must be >= 0'),
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
  with pytest.raises(config_lib.ConfigError,
                     match=r"data.name='markov': model.name=mlp needs vector or "
                     r'image data \(teacher_student \| modular \| digits\)'):
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


def test_the_schema_declares_every_field_with_a_comment():
  import inspect
  import re
  from dynamics import config_schema
  source = inspect.getsource(config_schema)
  declarations = [l.strip() for l in source.splitlines()
                  if re.match(r'\s+[a-z]+\.[a-z_0-9]+ = ', l)
                  and 'ConfigDict()' not in l]
  assert len(declarations) > 100
  undocumented = [l for l in declarations if '#' not in l]
  assert not undocumented, undocumented


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


# Malformed values: one error naming the field, before anything is built.

def _set(c, **fields):
  with c.ignore_type():
    c.update_from_flattened_dict(fields)
  return c


@pytest.mark.parametrize('fields, message', [
    ({'optimizer.learning_rate': math.inf},
     'optimizer.learning_rate=inf: must be a finite number > 0'),
    ({'model.init_scale': math.inf}, 'model.init_scale=inf: must be a finite'),
    ({'optimizer.sam.rho': math.inf}, 'optimizer.sam.rho=inf: must be a finite'),
    ({'model.output_scale': math.inf}, 'model.output_scale=inf: must be a finite'),
    ({'schedule.final_value': math.nan}, 'schedule.final_value=nan: must be a finite'),
    ({'schedule.final_value': -1.0}, 'schedule.final_value=-1.0: must be >= 0'),
    ({'schedule.final_value': 1.0},
     'schedule.final_value=1.0: must be <= the peak optimizer.learning_rate'),
    ({'optimizer.name': 'stable_spam', 'optimizer.stable_spam.beta1_decay_steps': 0},
     'optimizer.stable_spam.beta1_decay_steps=0: must be an integer > 0'),
    ({'optimizer.name': 'stable_spam', 'optimizer.stable_spam.beta1_decay_min': 2.0},
     'optimizer.stable_spam.beta1_decay_min=2.0: must be in [0, 1]'),
    ({'optimizer.name': 'adamp', 'optimizer.adamp.wd_ratio': -1.0},
     'optimizer.adamp.wd_ratio=-1.0: must be >= 0'),
    ({'optimizer.name': 'sgdp', 'optimizer.sgdp.dampening': -1.0},
     'optimizer.sgdp.dampening=-1.0: must be in [0, 1]'),
    ({'analysis.sharpness_batches': 0}, 'analysis.sharpness_batches=0'),
    ({'analysis.ntk_num_examples': 0}, 'analysis.ntk_num_examples=0'),
    ({'seed': 99999999999999999999}, 'seed=99999999999999999999: must be an integer'),
    ({'seed': 2**32}, 'seed=4294967296: must be an integer >= 0 and < 2**32'),
    ({'data.name': 'bytes', 'data.max_bytes': 10}, 'data.max_bytes=10: reads too little'),
    ({'model.attention_impl': 'cudnn'}, "model.attention_impl='cudnn': needs a CUDA GPU"),
    ({'optimizer.grad_accum_steps': 0}, 'optimizer.grad_accum_steps=0'),
    ({'ema.decay': 1.0}, 'ema.decay=1.0: must be in [0, 1) or None'),
    ({'merge.shape': 'exp'}, "merge.shape='exp': must be one of"),
    ({'loss.name': 'hinge'}, "loss.name='hinge': must be one of"),
    ({'loss.vocab_chunk': 0}, 'loss.vocab_chunk=0: must be an integer > 0'),
    ({'loss.vocab_chunk': 8, 'model.quantization': 'int4'},
     'loss.vocab_chunk=8: does not fake-quantize the head'),
])
def test_malformed_values_name_the_field(fields, message):
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_set(_smoke(), **fields))
  assert message in str(err.value)


def test_a_malformed_value_stops_before_the_workdir_exists(tmp_path):
  from dynamics import train
  config = _set(_smoke(), **{'optimizer.learning_rate': math.inf})
  with pytest.raises(config_lib.ConfigError, match='learning_rate=inf'):
    train.train_and_evaluate(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()


def test_byte_text_must_hold_enough_text(tmp_path):
  (tmp_path / 'a.txt').write_text('too short')
  config = _set(_smoke(), **{'data.name': 'bytes', 'data.text_dir': str(tmp_path)})
  with pytest.raises(config_lib.ConfigError, match=r'data.text_dir=.*holds 9 '
                     r'bytes of .py, .txt and .md text, too few'):
    config_lib.validate(config)
  (tmp_path / 'b.md').write_text('x' * 20 * 17)  # 20 windows of seq_len 16.
  config_lib.validate(config)


def test_an_optional_dataset_names_its_package(monkeypatch):
  from dynamics import data as data_lib
  monkeypatch.setattr(data_lib, '_installed', lambda package: False)
  config = _set(_smoke(), **{'data.name': 'huggingface', 'data.hf_name': 'x'})
  with pytest.raises(config_lib.ConfigError, match=r"data.name='huggingface': "
                     r"needs the optional package 'datasets'"):
    config_lib.validate(config)


def test_tfds_text_is_language_data(monkeypatch):
  """``tfds`` reads byte-level text (data/text.py): a transformer takes it,
  a CNN does not."""
  from dynamics import data as data_lib
  monkeypatch.setattr(data_lib, '_installed', lambda package: True)
  config = _set(_smoke(), **{'data.name': 'tfds', 'data.hf_name': 'lm1b'})
  config_lib.validate(config)
  from configs import adamp
  cnn = _set(adamp.get_config('smoke'), **{'data.name': 'tfds',
                                           'data.hf_name': 'lm1b'})
  with pytest.raises(config_lib.ConfigError,
                     match=r"data.name='tfds': model.name=cnn needs image data"):
    config_lib.validate(cnn)


def test_the_seed_bound_is_where_jax_keys_repeat():
  import jax
  assert (jax.random.key_data(jax.random.PRNGKey(2**32 - 1)).tolist()
          != jax.random.key_data(jax.random.PRNGKey(0)).tolist())
  assert (jax.random.key_data(jax.random.PRNGKey(2**32)).tolist()
          == jax.random.key_data(jax.random.PRNGKey(0)).tolist())
  config_lib.validate(_set(_smoke(), seed=2**32 - 1))


def test_every_check_message_is_one_line_naming_the_field():
  from dynamics import errors
  with pytest.raises(errors.ConfigError) as err:
    errors.number('a.b', 1.5, at_least=0, below=1, optional=True)
  assert str(err.value) == 'config.a.b=1.5: must be in [0, 1) or None'
  with pytest.raises(errors.ConfigError) as err:
    errors.number('a.b', math.nan, above=0)
  assert str(err.value) == 'config.a.b=nan: must be a finite number > 0'
  with pytest.raises(errors.ConfigError) as err:
    errors.integer('a.b', True, 1)
  assert str(err.value) == 'config.a.b=True: must be an integer > 0'
  assert config_lib.ConfigError is errors.ConfigError


# The deprecated flat optimizer fields (one release).

def test_a_flat_field_moves_into_the_selected_section(caplog):
  c = _smoke()
  c.optimizer.b2 = 0.99
  c.optimizer.gamma1 = 0.5  # adamw has none: ignored, as before.
  config_lib.validate(c)
  assert c.optimizer.adamw.b2 == 0.99 and c.optimizer.b2 is None
  assert c.optimizer.stable_spam.gamma1 == 0.7 and c.optimizer.gamma1 is None
  notices = [r.getMessage() for r in caplog.records]
  assert ('config.optimizer.b2 is deprecated: use optimizer.adamw.b2 (set to '
          '0.99)') in notices
  assert any(n.startswith('config.optimizer.gamma1 is deprecated and '
                          'optimizer.name=adamw has no such field: ignored')
             for n in notices)
  assert config_migrate.resolve_deprecated(c) == []  # Nothing left to move.


def test_a_flat_momentum_goes_to_the_momentum_of_the_selected_optimizer():
  for name in ('momentum', 'sgdp'):
    c = _smoke()
    c.optimizer.name = name
    config_migrate.resolve_deprecated(c, {'momentum': 0.5})
    assert c.optimizer[name].momentum == 0.5
    other = 'sgdp' if name == 'momentum' else 'momentum'
    assert c.optimizer[other].momentum == 0.9


def test_old_records_migrate_to_the_sections():
  """The flat layout of a run recorded before the sections (the configs of
  results/training_jacobian.json as committed before them, kept in
  tests/fixtures) opens with its values in place."""
  with open(os.path.join(ROOT, 'tests', 'fixtures',
                         'flat_config_record.json')) as f:
    old = json.load(f)['config']
  assert old['optimizer']['momentum'] == 0.9 and 'b2' in old['optimizer']
  new = config_migrate.migrate_flat_fields(old)
  assert old['optimizer']['momentum'] == 0.9  # Pure.
  assert new['optimizer']['momentum'] == {'momentum': 0.9, 'nesterov': False}
  assert 'b2' not in new['optimizer']  # The momentum optimizer had none.
  config = config_migrate.config_from_record(new)
  assert config.optimizer.momentum.momentum == 0.9
  assert config_migrate.migrate_flat_fields(new) == new
  stable = {'optimizer': {'name': 'stable_spam', 'b2': 0.999,
                          'reset_interval': 500, 'momentum': 0.9}}
  assert config_migrate.migrate_flat_fields(stable)['optimizer'] == {
      'name': 'stable_spam', 'stable_spam': {'b2': 0.999, 'reset_interval': 500}}


def test_flat_fields_on_the_command_line_warn_and_resolve(tmp_path):
  out = _main('--config=configs/sam.py:smoke', '--config.optimizer.momentum=1.5',
              '--config.optimizer.nesterov=True', f'--workdir={tmp_path}/d')
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 1, out.stderr
  assert lines == [
      'Warning: config.optimizer.nesterov is deprecated: use '
      'optimizer.momentum.nesterov (set to True)',
      'Warning: config.optimizer.momentum is deprecated: use '
      'optimizer.momentum.momentum (set to 1.5)',
      'Config error: config.optimizer.momentum.momentum=1.5: must be in [0, 1)'
  ], out.stderr
  assert not (tmp_path / 'd').exists()


@pytest.mark.parametrize('config_file, args, message', [
    ('def get_config():\n  return 1 / 0\n', [],
     'Config error: {path}:2 (return 1 / 0): ZeroDivisionError: division by zero'),
    ('from configs import base\ndef get_config():\n  c = base.get_config()\n'
     '  c.optimizer.lr = 0.1\n  return c\n', [],
     'Config error: {path}:4 (c.optimizer.lr = 0.1): sets or reads a field '
     'not declared in dynamics/config_schema.py'),
    ('def get_config():\n  return {"a": 1}\n', [],
     'Config error: --config={path}: get_config() returned a dict, not the '
     'ConfigDict of configs/base.py:get_config()'),
    (None, ['--config.optimizer.adamw.bb2=0.9'],
     'Config error: config.optimizer.adamw.bb2: unknown field (not declared in '
     'dynamics/config_schema.py); did you mean b2?'),
    (None, ['--config.optimizer.sam.rho=abc'],
     "Config error: config.optimizer.sam.rho='abc': could not convert string "
     "to float: 'abc'"),
    (None, ['--workdirr=x'],
     'Flag error: --workdirr: unknown flag; did you mean --workdir? (see --help)'),
], ids=['file-raises', 'file-sets-undeclared', 'file-returns-dict',
        'unknown-field', 'bad-value', 'unknown-flag'])
def test_flag_errors_are_one_line_from_their_type(tmp_path, config_file, args,
                                                  message):
  """Before JAX starts: the line comes from the exception's type, the
  command line and the config file's traceback."""
  path = 'configs/wsd.py'
  if config_file is not None:
    path = str(tmp_path / 'config.py')
    with open(path, 'w') as f:
      f.write(config_file)
  out = _main(f'--config={path}', *args, f'--workdir={tmp_path}/w')
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 1 and lines == [message.format(path=path)], out.stderr
