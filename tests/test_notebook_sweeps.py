"""analysis/notebooks/lr_sensitivity.ipynb and optimizers_4bit.ipynb read the
committed results and print exactly the lines analysis.results makes from
them; nothing in them trains."""

import importlib

import jax
import pytest

from analysis import results
from notebooks import claim_verdicts, run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.mark.parametrize('name', ['lr_sensitivity', 'optimizers_4bit'])
def test_notebook_prints_the_committed_sweep(name, tmp_path, monkeypatch):
  nb, text = run_notebook(name, tmp_path, monkeypatch)
  reader = importlib.import_module(f'analysis.results.{name}')
  record = results.read_result(name)
  printed = text.splitlines()
  missing = [line for line in reader.report_lines(record['numbers'])
             if line not in printed]
  assert not missing, missing
  assert f"seeds {record['seeds']}" in text
  assert claim_verdicts(text) == reader.claims(record['numbers'])
  assert (tmp_path / f'{name}.png').stat().st_size > 10_000
  # Nothing trains in the notebook: no training code in its cells.
  source = ''.join(c.source for c in nb.cells if c.cell_type == 'code')
  for word in ('train_and_evaluate', 'train_step', 'get_config', 'optax'):
    assert word not in source, word
