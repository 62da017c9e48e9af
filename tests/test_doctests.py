"""Every docstring example in dynamics/, analysis/ and experiments/ runs and
prints what it says.

Equivalent to ``pytest --doctest-modules dynamics analysis experiments``
(notebooks and ``__main__`` modules excluded), one test per module so that a
failure names it. Only modules whose source holds an example (``>>>``) are
imported; one that also defines command-line flags (absl's registry is
global, and two commands may define the same flag) runs in a process of its
own.
"""

import doctest
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('dynamics', 'analysis', 'experiments')
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_paths():
  """``{module name: path}`` of the modules whose source has an example."""
  out = {}
  for package in PACKAGES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
      dirnames[:] = [d for d in dirnames if d not in ('notebooks', '__pycache__')]
      for f in sorted(filenames):
        if not f.endswith('.py') or f == '__main__.py':
          continue
        path = os.path.join(dirpath, f)
        with open(path) as fh:
          if '>>>' not in fh.read():
            continue
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join(parts)] = path
  return dict(sorted(out.items()))


MODULES = _module_paths()


def _defines_flags(name):
  with open(MODULES[name]) as f:
    return 'flags.DEFINE_' in f.read()


def _examples(module):
  finder = doctest.DocTestFinder(exclude_empty=True)
  return [t for t in finder.find(module, module.__name__)
          if t.examples and t.name.startswith(module.__name__)]


def _run(name):
  """``(examples run, failures, report)`` of module ``name``'s docstrings."""
  module = importlib.import_module(name)
  runner = doctest.DocTestRunner(optionflags=OPTIONS, verbose=False)
  report = []
  for test in _examples(module):
    runner.run(test, out=report.append)
  return runner.tries, runner.failures, ''.join(report)


def test_examples_exist_and_the_runner_catches_a_wrong_one():
  """Not a vacuous check: every package has examples, and a wrong one fails."""
  for package in PACKAGES:
    assert any(m.split('.')[0] == package for m in MODULES), package
  assert len(MODULES) >= 10, sorted(MODULES)
  assert _run('experiments.reproductions.optimizers_4bit')[0] >= 4
  wrong = doctest.DocTestParser().get_doctest('>>> 1 + 1\n3\n', {}, 'wrong',
                                              None, 0)
  runner = doctest.DocTestRunner(verbose=False)
  runner.run(wrong, out=lambda _: None)
  assert runner.failures == 1


@pytest.mark.parametrize('name', sorted(MODULES))
def test_docstring_examples_run(name):
  if _defines_flags(name):
    code = ('import sys, test_doctests as t; tries, failures, report = '
            f't._run({name!r}); print(report); sys.exit(1 if failures else 0)')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [ROOT, os.path.join(ROOT, 'tests')])),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return
  _, failures, report = _run(name)
  assert failures == 0, report
