"""Runs analysis/notebooks/edge_of_stability.ipynb top to bottom at smoke size."""

import os
import re

import jax
import nbformat
from nbclient import NotebookClient

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'analysis', 'notebooks', 'edge_of_stability.ipynb')
FIGURES = ('eos_gd_sharpness.png', 'eos_sam_sharpness.png', 'eos_sgd_trace.png')


def test_notebook_runs_and_saves_the_figures(tmp_path, monkeypatch):
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(tmp_path))
  with open(NOTEBOOK) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  for name in FIGURES:
    path = tmp_path / name
    assert path.exists() and path.stat().st_size > 10_000, name
  text = ''.join(out.get('text', '') for cell in nb.cells
                 if cell.cell_type == 'code' for out in cell.get('outputs', []))
  assert 'SMOKE=True' in text
  for lr in (0.1, 0.2, 0.3):
    assert f'GD eta={lr}: sharpness' in text
  # The SAM table: one row per rho, with the closed-form prediction.
  rows = re.findall(r'^\s*(0\.0\d+)\s+([\d.]+)\s+([\d.]+)$', text, re.M)
  assert [r[0] for r in rows] == ['0.010', '0.020', '0.050']
  assert [r[1] for r in rows] == ['17.08', '15.31', '12.36']
  assert 'SGD, batch 8: trace of the training-loss Hessian' in text
