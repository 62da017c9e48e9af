"""Runs analysis/notebooks/wsd_river_valley.ipynb top to bottom at smoke size."""


import jax

from notebooks import run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')

FIGURES = ('wsd_river_valley_signature.png', 'wsd_river_valley_final_loss.png',
           'wsd_river_valley_annealing_law.png')


def test_notebook_runs_and_saves_figures(tmp_path, monkeypatch):
  nb, text = run_notebook('wsd_river_valley', tmp_path, monkeypatch)
  for name in FIGURES:
    path = tmp_path / name
    assert path.exists() and path.stat().st_size > 10_000, name
  # The final-loss table covers every method at every budget ...
  for method in ('cosine', 'WSD linear', 'WSD cosine', 'WSD 1-sqrt',
                 'WSD-S linear', 'WSM uniform', 'WSM 1-sqrt', 'WSM cosine'):
    assert method in text, method
  # ... the law's held-out error is reported, and the verdict is stated.
  assert 'held-out runs: final-loss relative error' in text
  assert 'WSD signature' in text and ('AGREES' in text)
