"""analysis.results: the committed figures are what the committed numbers draw.

Every figure under ``docs/figures/`` that a reproduction draws is redrawn
here from its ``results/NAME.json`` alone and must come out byte for byte
the same (Agg output is deterministic), so a figure cannot drift from its
numbers, and moving or refactoring the plotting code cannot change one.
"""

import importlib
import os

import pytest

from analysis import results
from experiments.reproductions import REPRODUCTIONS


@pytest.mark.parametrize('name', sorted(REPRODUCTIONS))
def test_figures_redraw_byte_for_byte_from_the_committed_json(name, tmp_path):
  reader = importlib.import_module(f'analysis.results.{REPRODUCTIONS[name]}')
  numbers = results.read_result(name)['numbers']
  paths = reader.plot(numbers, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == list(reader.FIGURES)
  for path in paths:
    committed = os.path.join(results.FIGURES_DIR, os.path.basename(path))
    with open(path, 'rb') as new, open(committed, 'rb') as old:
      assert new.read() == old.read(), (
          f'{os.path.basename(path)} differs from docs/figures: redraw it with '
          f'python -m experiments.reproduce {name}, or find what changed')


def test_figures_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(tmp_path / 'figs'))
  assert results.figures_dir() == str(tmp_path / 'figs')
  assert (tmp_path / 'figs').is_dir()
  monkeypatch.delenv('DYNAMICS_FIGURES_DIR')
  assert results.figures_dir() == results.FIGURES_DIR
