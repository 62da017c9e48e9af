"""Runs a notebook of analysis/notebooks at smoke size, figures to a scratch dir."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_notebook(name: str, figures_dir, monkeypatch, timeout: int = 600):
  """Executes ``analysis/notebooks/<name>.ipynb`` top to bottom.

  Sets ``DYNAMICS_NOTEBOOK_SMOKE=1`` and sends figures to ``figures_dir`` (so
  the suite never rewrites docs/figures). Returns the executed notebook and
  the text of all its code cells' outputs.
  """
  monkeypatch.setenv('DYNAMICS_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('DYNAMICS_FIGURES_DIR', str(figures_dir))
  path = os.path.join(ROOT, 'analysis', 'notebooks', f'{name}.ipynb')
  with open(path) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=timeout, kernel_name='python3',
                 resources={'metadata': {'path': ROOT}}).execute()
  text = ''.join(out.get('text', '') for cell in nb.cells
                 if cell.cell_type == 'code' for out in cell.get('outputs', []))
  return nb, text


def claim_verdicts(text: str):
  """``{claim: reproduced?}`` from a notebook's ``'reproduced: CLAIM'`` and
  ``'NOT reproduced: CLAIM'`` lines (parsed here, independently of
  `analysis.results.claim_lines`)."""
  out = {}
  for line in text.splitlines():
    word, sep, claim = line.partition(': ')
    if word in ('reproduced', 'NOT reproduced') and sep:
      out[claim] = word == 'reproduced'
  return out
