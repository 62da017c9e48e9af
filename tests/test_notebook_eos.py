"""Runs analysis/notebooks/edge_of_stability.ipynb top to bottom at smoke size."""

import re

import jax

from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')

FIGURES = ('eos_gd_sharpness.png', 'eos_sam_sharpness.png', 'eos_sgd_trace.png')


def test_notebook_runs_and_saves_the_figures(tmp_path, monkeypatch):
  nb, text = run_notebook('edge_of_stability', tmp_path, monkeypatch)
  for name in FIGURES:
    path = tmp_path / name
    assert path.exists() and path.stat().st_size > 10_000, name
  assert 'SMOKE=True' in text
  for lr in (0.1, 0.2, 0.3):
    assert f'GD eta={lr}: sharpness' in text
  # The SAM table: one row per rho, with the closed-form prediction.
  rows = re.findall(r'^\s*(0\.0\d+)\s+([\d.]+)\s+([\d.]+)$', text, re.M)
  assert [r[0] for r in rows] == ['0.010', '0.020', '0.050']
  assert [r[1] for r in rows] == ['17.08', '15.31', '12.36']
  assert 'SGD, batch 8: trace of the training-loss Hessian' in text
