"""Runs analysis/notebooks/optimizers_4bit.ipynb top to bottom at smoke size."""

import os

import jax
import nbformat
from nbclient import NotebookClient

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'analysis', 'notebooks', 'optimizers_4bit.ipynb')


def test_notebook_compares_adam_and_stable_spam_under_4bit(tmp_path, monkeypatch):
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(tmp_path))
  with open(NOTEBOOK) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  pngs = [f for f in os.listdir(tmp_path) if f.endswith('.png')]
  assert pngs and all((tmp_path / f).stat().st_size > 10_000 for f in pngs)
  text = ''.join(out.get('text', '') for cell in nb.cells
                 if cell.cell_type == 'code' for out in cell.get('outputs', []))
  for row in ('Adam int4', 'Stable-SPAM int4'):
    assert row in text, f'missing the {row!r} row of the comparison table'
