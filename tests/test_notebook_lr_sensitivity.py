"""Runs analysis/notebooks/lr_sensitivity.ipynb top to bottom at smoke size."""


import jax

from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')



def test_notebook_runs_and_saves_the_figure(tmp_path, monkeypatch):
  nb, text = run_notebook('lr_sensitivity', tmp_path, monkeypatch)
  path = tmp_path / 'lr_sensitivity.png'
  assert path.exists() and path.stat().st_size > 10_000
  for name in ('baseline', 'qk-norm + z-loss'):
    assert f'LR sensitivity of {name}:' in text
