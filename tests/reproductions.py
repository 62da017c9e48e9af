"""The test_reproduce_* modules' shared fixture: a reproduction run at smoke
size into a scratch directory."""

import pytest

from experiments import reproduce


def smoke_fixture(name, seeds=(0,)):
  """A module-scoped fixture ``record`` -> ``(record, out)``:
  ``experiments.reproduce.reproduce(name, 'smoke', seeds)`` with its results
  file and figures in the fresh directory ``out``. Use as
  ``record = smoke_fixture('river_valley')``."""

  @pytest.fixture(scope='module')
  def record(tmp_path_factory):
    out = tmp_path_factory.mktemp(name)
    rec = reproduce.reproduce(name, 'smoke', tuple(seeds), out_dir=str(out),
                              figures_dir=str(out), log=lambda *_: None)
    return rec, out

  return record
