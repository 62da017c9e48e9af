"""Executes the NTK and training-Jacobian notebooks at reduced size (nbclient).

Each notebook asserts its own claims (kernel distance falling with alpha and
width; a larger bulk on digits than on white noise; bulk perturbations
changing the outputs far less than top-singular-direction ones).
"""

import os

import jax
import nbformat
import pytest
from nbclient import NotebookClient

jax.config.update('jax_numpy_rank_promotion', 'raise')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name', ['lazy_vs_rich', 'training_jacobian'])
def test_notebook_runs_at_smoke_size(name, monkeypatch, tmp_path):
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  # Figures go to a scratch folder: the suite never rewrites docs/figures.
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(tmp_path))
  path = os.path.join(ROOT, 'analysis', 'notebooks', f'{name}.ipynb')
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  pngs = [f for f in os.listdir(tmp_path) if f.startswith(name) and f.endswith('.png')]
  assert pngs and all((tmp_path / f).stat().st_size > 10_000 for f in pngs)
