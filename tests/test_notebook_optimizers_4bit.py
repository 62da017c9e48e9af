"""Runs analysis/notebooks/optimizers_4bit.ipynb top to bottom at smoke size."""

import os

import jax

from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')



def test_notebook_compares_adam_and_stable_spam_under_4bit(tmp_path, monkeypatch):
  nb, text = run_notebook('optimizers_4bit', tmp_path, monkeypatch)
  pngs = [f for f in os.listdir(tmp_path) if f.endswith('.png')]
  assert pngs and all((tmp_path / f).stat().st_size > 10_000 for f in pngs)
  for row in ('Adam int4', 'Stable-SPAM int4'):
    assert row in text, f'missing the {row!r} row of the comparison table'
