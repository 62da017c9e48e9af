"""Runs analysis/notebooks/lr_sensitivity.ipynb top to bottom at smoke size."""

import os

import jax
import nbformat
from nbclient import NotebookClient

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'analysis', 'notebooks', 'lr_sensitivity.ipynb')


def test_notebook_runs_and_saves_the_figure(tmp_path, monkeypatch):
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(tmp_path))
  with open(NOTEBOOK) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  path = tmp_path / 'lr_sensitivity.png'
  assert path.exists() and path.stat().st_size > 10_000
  text = ''.join(out.get('text', '') for cell in nb.cells
                 if cell.cell_type == 'code' for out in cell.get('outputs', []))
  for name in ('baseline', 'qk-norm + z-loss'):
    assert f'LR sensitivity of {name}:' in text
