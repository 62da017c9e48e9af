"""Runs analysis/notebooks/edge_of_stability.ipynb on the committed results.

The notebook trains nothing: it reads ``results/edge_of_stability.json``,
draws the figures and prints its conclusions. Each printed number is checked
against the JSON here, formatted independently of the notebook's code.
"""

from analysis import results
from analysis.results import edge_of_stability as eos
from notebooks import claim_verdicts, run_notebook

FIGURES = ('eos_gd_sharpness.png', 'eos_sam_sharpness.png', 'eos_sgd_trace.png')


def _pm(stats, digits):
  return (f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
          if stats['n'] > 1 else f"{stats['mean']:.{digits}f}")


def test_notebook_prints_the_committed_numbers(tmp_path, monkeypatch):
  _, text = run_notebook('edge_of_stability', tmp_path, monkeypatch)
  lines = text.splitlines()
  record = results.read_result('edge_of_stability')
  numbers = record['numbers']
  for name in FIGURES:
    assert (tmp_path / name).stat().st_size > 10_000, name
  assert f"seeds {record['seeds']}" in text
  for rate in numbers['settings']['gd_rates']:
    g = numbers['gd'][f'{rate:g}']
    line = next(l for l in lines if l.startswith(f'GD eta={rate:g}:'))
    assert f"{_pm(g['last_third'], 3)} over the last third" in line
    assert f"(2/eta = {2 / rate:.4g}," in line
  sam = numbers['sam']
  for rho, r in sam['rhos'].items():
    line = next(l for l in lines if l.startswith(f"SAM eta={sam['rate']:g} "
                                                 f'rho={rho}:'))
    assert f"predicted {r['predicted']:.2f}, measured " in line
    assert f"{_pm(r['last_third'], 2)} (relative error" in line
    # The verdict of analysis.stats, not the 2-SE rule: none below 5 seeds,
    # else a paired t-test named with its n.
    verdict = results.verdict(r['vs_gd'], 'lower beyond noise',
                              'higher beyond noise')
    n = len(record['seeds'])
    if n < 5:
      assert verdict == f'no verdict: {n} seeds (a verdict needs 5)'
    else:
      assert f'paired t, {n} seeds)' in verdict, verdict
    assert line.endswith(f': {verdict}'), line
  t = numbers['sgd']['trace']
  line = next(l for l in lines if l.startswith('Hessian trace'))
  assert f"{_pm(t['a'], 1)}, GD {_pm(t['b'], 1)} (" in line
  # Every claim gets one computed verdict line.
  verdicts = claim_verdicts(text)
  assert verdicts == eos.claims(numbers) and len(verdicts) == 5
  # Recomputed here: GD within 10% of 2/eta at every rate and seed.
  gd_ok = all(abs(v * rate / 2 - 1) <= 0.10
              for rate in numbers['settings']['gd_rates']
              for v in numbers['gd'][f'{rate:g}']['last_third']['values'])
  assert verdicts[next(c for c in verdicts if c.startswith(
      'GD sharpness over the last third'))] == gd_ok
