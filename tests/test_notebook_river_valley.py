"""analysis/notebooks/wsd_river_valley.ipynb reads results/river_valley.json:
it trains nothing, draws the figures, and prints the committed numbers and
the verdicts they imply, line for line."""

import ast
import os

import jax
from scipy import stats as scipy_stats

from analysis import results
from analysis.results import river_valley as rv
from notebooks import ROOT, claim_verdicts, run_notebook

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _t_words(c, lower, higher):
  """The verdict words of a paired t-test (scipy, computed here) on a stored
  comparison's per-seed values: no direction below 5 seeds or at p >= 0.05."""
  a, b = c['a']['values'], c['b']['values']
  if len(a) < 5:
    return f'no verdict: {len(a)} seeds (a verdict needs 5)'
  p = scipy_stats.ttest_rel(a, b).pvalue
  p_text = ('p < 0.0001' if p < 1e-4 else f'p = {p:.2g}' if p < 0.01
            else f'p = {p:.3g}' if p < 0.1 else f'p = {p:.2f}')
  word = ('within noise' if p >= 0.05 else lower
          if sum(a) < sum(b) else higher)
  return f'{word} ({p_text}, paired t, {len(a)} seeds)'


def _pm(stats, digits=4):
  return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def test_notebook_prints_the_committed_numbers_and_verdicts(tmp_path, monkeypatch):
  _, text = run_notebook('wsd_river_valley', tmp_path, monkeypatch, timeout=300)
  lines = text.splitlines()
  numbers = results.read_result('river_valley')['numbers']
  for name in rv.FIGURES:
    assert (tmp_path / name).stat().st_size > 10_000, name
  budgets = [str(b) for b in numbers['setup']['budgets']]
  expected = []
  for b in budgets:
    sig = numbers['signature'][b]
    said = _t_words(sig, 'the constant rate drops more', 'the decay drops more')
    expected.append(f"budget {b}: decay drop {_pm(sig['a'])} nats, constant "
                    f"rate {_pm(sig['b'])} ({said})")
    c = numbers['comparisons']['wsm_vs_decay'][b]
    lower = _t_words(c, c['a_method'] + ' lower', c['b_method'] + ' lower')
    expected.append(f"{'best WSM - best WSD decay':32s} {b:>5s}: {c['a_method']} - "
                    f"{c['b_method']} = {c['difference']:+.4f} ± "
                    f"{c['stderr']:.4f} ({lower})")
  for method in rv.METHODS:
    expected.append(f'{method:20s}' + ''.join(
        f"{_pm(numbers['final'][method][b]):>18s}" for b in budgets))
  law = numbers['law']
  expected.append(f"held-out runs: final-loss relative error mean "
                  f"{_pm(law['held_out_mean'])}, max {_pm(law['held_out_max'])} "
                  f"(largest: {law['worst']})")
  for line in expected:
    assert line in lines, line
  verdicts = claim_verdicts(text)
  assert verdicts == rv.claims(numbers)
  # Two verdicts recomputed here from the per-seed final losses, independently
  # of the module: a WSM merge "matches" a decay when the best WSM (by mean) is
  # at most two standard errors above the best WSD branch.
  final = numbers['final']
  matches = []
  for b in budgets:
    best = lambda prefix: min((final[m][b] for m in rv.METHODS
                               if m.startswith(prefix)), key=lambda s: s['mean'])
    wsm, wsd = best('WSM '), best('WSD ')
    # Paired t-test (scipy, here), 5 seeds at least: "matches or beats" is
    # "tested, and not significantly higher".
    p = scipy_stats.ttest_rel(wsm['values'], wsd['values']).pvalue
    matches.append(wsm['n'] >= 5 and not (
        p < 0.05 and wsm['mean'] > wsd['mean']))
  claim = 'the best WSM merge matches or beats an actual decay at every budget'
  assert verdicts[claim] == all(matches)
  law_claim = next(c for c in verdicts if c.startswith('the annealing law'))
  assert verdicts[law_claim] == (law['held_out_mean']['mean'] < 0.01)


def test_notebook_defines_no_model_loss_or_training():
  """Its code imports only the results' reader, no library internals."""
  with open(os.path.join(ROOT, 'analysis', 'notebooks', 'wsd_river_valley.py')) as f:
    tree = ast.parse(f.read())
  imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
              for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
  assert imported == {'analysis', 'analysis.results'}
  assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                          ast.Lambda))]
