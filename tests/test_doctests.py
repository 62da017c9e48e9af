"""Every docstring example in dynamics/ and analysis/ runs and prints what it says.

Equivalent to ``pytest --doctest-modules dynamics analysis`` (notebooks
excluded), one test per module so that a failure names it.
"""

import doctest
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_names():
  names = []
  for package in ('dynamics', 'analysis'):
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
      dirnames[:] = [d for d in dirnames if d not in ('notebooks', '__pycache__')]
      for f in sorted(filenames):
        if f.endswith('.py') and f != '__main__.py':
          rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3]
          parts = rel.split(os.sep)
          if parts[-1] == '__init__':
            parts = parts[:-1]
          names.append('.'.join(parts))
  return sorted(names)


MODULES = _module_names()


def _examples(module):
  finder = doctest.DocTestFinder(exclude_empty=True)
  return [t for t in finder.find(module, module.__name__)
          if t.examples and t.name.startswith(module.__name__)]


def test_examples_exist_and_the_runner_catches_a_wrong_one():
  """Not a vacuous check: there are examples, and a wrong one fails."""
  total = sum(len(_examples(importlib.import_module(m))) for m in MODULES)
  assert total >= 10, total
  wrong = doctest.DocTestParser().get_doctest('>>> 1 + 1\n3\n', {}, 'wrong',
                                              None, 0)
  runner = doctest.DocTestRunner(verbose=False)
  runner.run(wrong, out=lambda _: None)
  assert runner.failures == 1


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
  report = []
  for test in _examples(module):
    runner.run(test, out=report.append)
  assert runner.failures == 0, ''.join(report)
