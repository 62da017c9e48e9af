"""Every results file says which code made it, on what machine, under what load."""

import json
import os
import subprocess

from dynamics import outputs, provenance
from experiments.reproductions import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {'git_commit', 'git_dirty', 'cpu_model', 'cpu_count',
        'load_1min_start', 'load_1min_end'}


def test_provenance_names_this_checkout_and_machine():
  p = provenance.provenance()
  assert set(p) == KEYS
  head = subprocess.run(['git', '-C', ROOT, 'rev-parse', 'HEAD'],
                        capture_output=True, text=True, check=True).stdout
  assert p['git_commit'] == head.strip()
  status = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain',
                           '--untracked-files=no'], capture_output=True,
                          text=True, check=True).stdout
  code = [l for l in status.splitlines()
          if not l[3:].startswith(('results/', 'docs/figures/'))]
  assert p['git_dirty'] is bool(code)
  assert p['cpu_count'] == os.cpu_count() and p['cpu_model']
  assert p['load_1min_end'] == round(os.getloadavg()[0], 2) or (
      abs(p['load_1min_end'] - os.getloadavg()[0]) < 5)


def test_outputs_written_into_the_checkout_do_not_make_it_dirty(tmp_path):
  """A results file an earlier command wrote is not code: clean; an edited
  module is: dirty."""
  git = lambda *a: subprocess.run(['git', '-C', str(tmp_path), *a],
                                  capture_output=True, text=True, check=True)
  git('init', '-q')
  for name in ('results/r.json', 'docs/figures/f.png', 'm.py'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text('0')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x')
  (tmp_path / 'results/r.json').write_text('1')
  (tmp_path / 'docs/figures/f.png').write_text('1')
  assert provenance.git_commit(str(tmp_path))['dirty'] is False
  (tmp_path / 'm.py').write_text('1')
  assert provenance.git_commit(str(tmp_path))['dirty'] is True


def test_outside_a_checkout_the_commit_is_none(tmp_path):
  assert provenance.git_commit(str(tmp_path)) == {'commit': None,
                                                  'dirty': None}


def test_the_start_load_is_taken_at_mark_start(monkeypatch):
  monkeypatch.setattr(os, 'getloadavg', lambda: (1.234, 0.0, 0.0))
  provenance.mark_start()
  monkeypatch.setattr(os, 'getloadavg', lambda: (7.5, 0.0, 0.0))
  p = provenance.provenance()
  assert (p['load_1min_start'], p['load_1min_end']) == (1.23, 7.5)
  assert provenance.loaded(p) == (p['cpu_count'] < 7.5)


def test_write_json_stamps_provenance_only_when_asked(tmp_path):
  path = str(tmp_path / 'r.json')
  outputs.write_json(path, {'x': 1.0}, provenance=True)
  with open(path) as f:
    assert set(json.load(f)['provenance']) == KEYS
  outputs.write_json(path, {'x': 1.0})
  with open(path) as f:
    assert json.load(f) == {'x': 1.0}


def test_every_reproduction_record_carries_provenance():
  record = common.result_record('x', 'smoke', [0], {'a': 1.0}, {}, 1.0,
                                command='python -m experiments.reproduce x')
  assert set(record['provenance']) == KEYS


def test_every_results_file_records_provenance():
  """Every results file (the README manifest, a map of the others, aside)
  carries its commit, dirty flag, machine and loads."""
  names = sorted(n for n in os.listdir(os.path.join(ROOT, 'results'))
                 if n.endswith('.json') and n != 'readme_manifest.json')
  assert len(names) >= 25, names
  for name in names:
    with open(os.path.join(ROOT, 'results', name)) as f:
      p = json.load(f).get('provenance')
    assert p is not None, f'{name} has no provenance: regenerate it'
    assert set(p) == KEYS, name
    assert len(p['git_commit']) == 40 and isinstance(p['git_dirty'], bool)
