"""analysis/notebooks/lr_sensitivity.ipynb reads the committed results and
prints exactly the lines analysis.results.lr_sensitivity makes from them."""

import jax

from analysis import results
from analysis.results import lr_sensitivity
from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_notebook_prints_the_committed_sweep(tmp_path, monkeypatch):
  nb, text = run_notebook('lr_sensitivity', tmp_path, monkeypatch)
  numbers = results.read_result('lr_sensitivity')['numbers']
  printed = text.splitlines()
  expected = lr_sensitivity.report_lines(numbers)
  expected += [f"{claim}: {'holds' if holds else 'does not hold'}"
               for claim, holds in lr_sensitivity.claims(numbers).items()]
  missing = [line for line in expected if line not in printed]
  assert not missing, missing
  assert (tmp_path / 'lr_sensitivity.png').stat().st_size > 10_000
  source = ''.join(c.source for c in nb.cells if c.cell_type == 'code')
  for word in ('train_and_evaluate', 'train_step', 'get_config', 'optax'):
    assert word not in source, word
