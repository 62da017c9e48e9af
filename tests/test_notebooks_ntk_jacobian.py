"""Executes the NTK and training-Jacobian notebooks at reduced size (nbclient).

Each notebook asserts its own claims (kernel distance falling with alpha and
width; a larger bulk on digits than on white noise; bulk perturbations
changing the outputs far less than top-singular-direction ones).
"""

import os

import jax
import pytest

from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.mark.parametrize('name', ['lazy_vs_rich', 'training_jacobian'])
def test_notebook_runs_at_smoke_size(name, monkeypatch, tmp_path):
  run_notebook(name, tmp_path, monkeypatch, timeout=300)
  pngs = [f for f in os.listdir(tmp_path) if f.startswith(name) and f.endswith('.png')]
  assert pngs and all((tmp_path / f).stat().st_size > 10_000 for f in pngs)
