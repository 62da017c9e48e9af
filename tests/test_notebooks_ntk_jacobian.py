"""Executes the NTK and training-Jacobian notebooks (nbclient).

The training-Jacobian notebook reads results/training_jacobian.json (no
training); its printed numbers and verdicts are checked against that file. The
lazy-vs-rich notebook reads results/lazy_vs_rich.json; its printed numbers and
verdicts are checked against that file.
"""

import jax

from notebooks import claim_verdicts, run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_training_jacobian_notebook_prints_the_committed_numbers(monkeypatch,
                                                                tmp_path):
  """It reads results/training_jacobian.json and prints each number and each
  verdict as the JSON has them (formatted here independently)."""
  from analysis import results
  from analysis.results import training_jacobian as tj
  _, text = run_notebook('training_jacobian', tmp_path, monkeypatch, timeout=300)
  lines = text.splitlines()
  record = results.read_result('training_jacobian')
  numbers = record['numbers']
  for name in tj.FIGURES:
    assert (tmp_path / name).stat().st_size > 10_000, name
  assert f"seeds {record['seeds']}" in text
  pm = lambda s, f: (f"{s['mean']:{f}} ± {s['std']:{f}}" if s['n'] > 1
                     else f"{s['mean']:{f}}")
  for d in ('digits', 'white noise'):
    r = numbers[d]
    assert any(line.startswith(f"{d}: bulk {pm(r['bulk_fraction'], '.1%')} "
                               f"(trivial {pm(r['trivial_fraction'], '.1%')})")
               for line in lines), d
  p = numbers['perturbation']
  assert any(f"{pm(p['bulk'], '.1e')} (bulk)" in line
             and f"{pm(p['top'], '.1e')} (top)" in line for line in lines)
  verdicts = claim_verdicts(text)
  assert verdicts == tj.claims(numbers) and len(verdicts) == 2
  # Recomputed here: digits' bulk fraction at least 3x white noise's, per seed.
  ratio_ok = all(
      v >= 3 * numbers['per_seed'][f'seed={s} white noise']['bulk_fraction']
      for s, v in zip(numbers['seeds'], numbers['digits']['bulk_fraction']['values']))
  assert verdicts[next(c for c in verdicts if c.startswith('bulk fraction'))] == ratio_ok


def test_lazy_vs_rich_notebook_prints_the_committed_numbers(monkeypatch, tmp_path):
  """It reads results/lazy_vs_rich.json (no training) and prints each number
  and each verdict as the JSON has them."""
  from analysis import results
  from analysis.results import lazy_vs_rich as lvr
  _, text = run_notebook('lazy_vs_rich', tmp_path, monkeypatch, timeout=300)
  lines = text.splitlines()
  numbers = results.read_result('lazy_vs_rich')['numbers']
  for name in lvr.FIGURES:
    assert (tmp_path / name).stat().st_size > 10_000, name
  pm = lambda s, d: f"{s['mean']:.{d}f} ± {s['std']:.{d}f}"
  a = numbers['alpha']
  for i, alpha in enumerate(a['alphas']):
    assert (f"alpha={alpha:>6g}: eval loss {pm(a['eval_loss'][i], 4)}"
            f"  kernel distance {a['kernel_distance'][i]['mean']:.2e}"
            f" ± {a['kernel_distance'][i]['std']:.1e}"
            f"  param change {a['param_change'][i]['mean']:.2e}"
            f"  alignment {a['alignment_init'][i]['mean']:.3f} -> "
            f"{a['alignment_final'][i]['mean']:.3f}"
            f" (gain {pm(a['alignment_gain'][i], 3)})") in lines
  for p, w in numbers['width'].items():
    for i, width in enumerate(w['widths']):
      assert any(line.startswith(f'{p:>8s} width {width:>5d}') and
                 f"kernel distance {w['kernel_distance'][i]['mean']:.2e}" in line
                 for line in lines), (p, width)
  verdicts = claim_verdicts(text)
  assert verdicts == lvr.claims(numbers)
  # Recomputed here: "falls at least 10x" from the smallest to the largest alpha.
  dist = a['kernel_distance']
  assert verdicts[next(c for c in verdicts if c.startswith('kernel distance'))] == (
      dist[0]['mean'] >= 10 * dist[-1]['mean'])
