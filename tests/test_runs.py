"""Tests for dynamics/runs.py: the run directory and its one owner.

``Run.create`` records a run and ``Run.open`` opens it; ``run.record`` and
``run.metrics()`` read it back, a torn metrics tail (a crash's partial line or
NUL padding) is dropped with one line of warning, damage before good lines is
one error naming the file and line, and no module but ``dynamics/runs.py``
spells a run file's name.
"""

import ast
import json
import logging
import os

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import config_migrate, config_schema, metrics, runs, workdir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = (runs.CONFIG_FILE, runs.METRICS_FILE, runs.RESUMES_FILE,
             runs.MERGE_FILE)


def _spellers(packages=('dynamics', 'analysis', 'experiments')):
  """``{module path: names}`` of the modules with a string constant that is
  a run file's name, or a path ending in one (f-string parts included)."""
  out = {}
  for package in packages:
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
      for name in filenames:
        if not name.endswith('.py'):
          continue
        path = os.path.join(dirpath, name)
        with open(path) as f:
          tree = ast.parse(f.read(), path)
        spelled = {c.value.strip().rsplit('/', 1)[-1] for c in ast.walk(tree)
                   if isinstance(c, ast.Constant) and isinstance(c.value, str)
                   and any(c.value.strip() == n or c.value.endswith('/' + n)
                           for n in RUN_FILES)}
        if spelled:
          out[os.path.relpath(path, ROOT)] = sorted(spelled)
  return out


def test_only_runs_py_names_the_run_files():
  assert set(RUN_FILES) == {'config.json', 'metrics.jsonl', 'resumes.jsonl',
                            'merge.json'}
  assert _spellers() == {'dynamics/runs.py': sorted(RUN_FILES)}


@pytest.fixture
def recorded(tmp_path):
  """A run recorded (not trained) in ``tmp_path``, with three metric lines."""
  config = wsd.get_config('smoke')
  run = runs.Run.create(str(tmp_path), config,
                        parent={'workdir': 'elsewhere', 'step': 7})
  with run.metric_writer() as writer:
    for step in (1, 2, 3):
      writer.write(step, {'train_loss': float(step)})
  return run


def test_create_records_every_field_and_the_lineage(recorded, tmp_path):
  with open(tmp_path / runs.CONFIG_FILE) as f:
    on_disk = json.load(f)
  assert on_disk == recorded.record
  assert on_disk['parent'] == {'workdir': os.path.abspath('elsewhere'),
                               'step': 7}
  declared = workdir.flatten(config_schema.defaults().to_dict())
  deprecated = {f'optimizer.{f}' for f in config_migrate.deprecated_flat_fields()}
  assert set(declared) - deprecated <= set(workdir.flatten(on_disk))
  assert not deprecated & set(workdir.flatten(on_disk))
  opened = runs.Run.open(str(tmp_path))
  assert opened.config.to_dict() == recorded.config.to_dict()
  assert opened.config.is_locked
  assert opened.record == on_disk and opened.parent == on_disk['parent']
  assert opened.metrics() == [{'step': s, 'train_loss': float(s)}
                              for s in (1, 2, 3)]


def test_opening_builds_nothing(recorded, monkeypatch):
  def no_build(config):
    raise AssertionError('built')
  monkeypatch.setattr(runs, 'build', no_build)
  run = runs.Run.open(recorded.workdir)
  assert run.config.num_steps == recorded.config.num_steps
  assert len(run.metrics()) == 3 and run.steps == []
  with pytest.raises(AssertionError, match='built'):
    run.dataset  # pylint: disable=pointless-statement


def test_a_run_without_metrics_has_none(tmp_path):
  run = runs.Run.create(str(tmp_path), wsd.get_config('smoke'))
  assert run.metrics() == [] and run.resumes() == [] and run.parent is None
  assert runs.Run(wsd.get_config('smoke')).metrics() == []
  with pytest.raises(runs.RunNotFoundError, match='holds no run'):
    runs.Run.open(str(tmp_path / 'nothing'))


def test_an_older_record_opens_with_the_declared_defaults(recorded, caplog):
  record = dict(recorded.record)
  del record['seed']                              # Declared after this run.
  record['model'] = dict(record['model'], retired=3)  # No longer declared.
  record['optimizer'] = dict(record['optimizer'], learning_rate=1)  # An int.
  with open(os.path.join(recorded.workdir, runs.CONFIG_FILE), 'w') as f:
    json.dump(record, f)
  with caplog.at_level(logging.WARNING):
    config = runs.Run.open(recorded.workdir).config
  assert config.seed == config_schema.defaults().seed
  assert 'retired' not in config.model
  assert 'fields no longer declared, ignored: model.retired' in caplog.text
  assert config.optimizer.learning_rate == 1  # As recorded: what it ran with.
  assert isinstance(config.model.hidden_sizes, tuple)  # JSON lists: tuples.
  assert config.model.hidden_sizes == recorded.config.model.hidden_sizes


def test_a_damaged_config_json_is_one_line_naming_it(recorded):
  path = os.path.join(recorded.workdir, runs.CONFIG_FILE)
  with open(path, 'w') as f:
    f.write('{"seed": 0,')
  with pytest.raises(runs.RunFileError, match=f'^{path}: not a JSON record'):
    runs.Run.open(recorded.workdir)


@pytest.mark.parametrize('tail', [b'{"step": 4, "train_lo', b'\0' * 37,
                                  b'{"step": 4}\0\0\0\0'],
                         ids=['partial line', 'NUL padding', 'NULs on a line'])
def test_a_torn_tail_is_dropped_with_one_line(recorded, capsys, tail):
  with open(recorded.metrics_path, 'ab') as f:
    f.write(tail)
  assert [m['step'] for m in recorded.metrics()] == [1, 2, 3]
  (warning,) = capsys.readouterr().err.splitlines()
  assert warning.startswith(f'WARNING: {recorded.metrics_path}: dropped')
  # A writer (a resume) drops it from the file, then appends after it.
  with recorded.metric_writer(resume_step=2) as writer:
    writer.write(3, {'train_loss': 9.0})
  assert recorded.metrics() == [{'step': 1, 'train_loss': 1.0},
                                {'step': 2, 'train_loss': 2.0},
                                {'step': 3, 'train_loss': 9.0}]


def test_a_last_line_without_newline_is_kept_and_appended_after(recorded):
  with open(recorded.metrics_path, 'ab') as f:
    f.write(b'{"step": 4}')
  with recorded.metric_writer() as writer:
    writer.write(5, {})
  assert [m['step'] for m in recorded.metrics()] == [1, 2, 3, 4, 5]


def test_damage_before_good_lines_is_an_error_naming_file_and_line(recorded):
  with open(recorded.metrics_path) as f:
    lines = f.readlines()
  lines[1] = '{"step": 2, "tr\0\0\n'
  with open(recorded.metrics_path, 'w') as f:
    f.writelines(lines)
  message = f'^{recorded.metrics_path}:2: not a JSON object, yet good lines'
  with pytest.raises(runs.RunFileError, match=message) as err:
    recorded.metrics()
  assert '\n' not in str(err.value)
  with pytest.raises(metrics.RunFileError, match=message):
    recorded.metric_writer(resume_step=3)
  with open(recorded.metrics_path) as f:
    assert f.readlines() == lines  # A writer that refuses leaves it as it was.
