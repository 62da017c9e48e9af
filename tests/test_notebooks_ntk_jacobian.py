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
def test_notebook_runs_at_smoke_size(name, monkeypatch):
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  path = os.path.join(ROOT, 'analysis', 'notebooks', f'{name}.ipynb')
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  figures = os.path.join(ROOT, 'docs', 'figures')
  assert any(f.startswith(name) and f.endswith('.png') for f in os.listdir(figures))
