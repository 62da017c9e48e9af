"""analysis/notebooks/optimizers_4bit.ipynb reads the committed results and
prints exactly the lines analysis.results.optimizers_4bit makes from them."""

import jax

from analysis import results
from analysis.results import optimizers_4bit
from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_notebook_prints_the_committed_sweep(tmp_path, monkeypatch):
  nb, text = run_notebook('optimizers_4bit', tmp_path, monkeypatch)
  numbers = results.read_result('optimizers_4bit')['numbers']
  printed = text.splitlines()
  expected = optimizers_4bit.report_lines(numbers)
  expected += [f"{claim}: {'holds' if holds else 'does not hold'}"
               for claim, holds in optimizers_4bit.claims(numbers).items()]
  missing = [line for line in expected if line not in printed]
  assert not missing, missing
  assert (tmp_path / 'optimizers_4bit.png').stat().st_size > 10_000
  # Nothing trains in the notebook: no training code in its cells.
  source = ''.join(c.source for c in nb.cells if c.cell_type == 'code')
  for word in ('train_and_evaluate', 'train_step', 'get_config', 'optax'):
    assert word not in source, word
