"""dynamics.progress: one bar, or a silent one."""

import sys

from dynamics import progress


def test_an_enabled_bar_is_tqdm_and_a_disabled_one_draws_nothing(capsys):
  from tqdm import auto as tqdm
  with progress.bar(4, 'work', leave=False, mininterval=0) as b:
    assert isinstance(b, tqdm.tqdm) and b.total == 4 and b.desc == 'work'
    b.update(3)
    assert b.n == 3
  assert 'work' in capsys.readouterr().err
  with progress.bar(4, 'quiet', enabled=False) as b:
    assert isinstance(b, progress.NoBar)
    b.update(3)
    b.set_postfix(loss='1.0')
  assert 'quiet' not in capsys.readouterr().err


def test_without_tqdm_the_bar_is_silent(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tqdm', None)   # import tqdm fails.
  monkeypatch.setitem(sys.modules, 'tqdm.auto', None)
  assert isinstance(progress.bar(4, 'work'), progress.NoBar)
