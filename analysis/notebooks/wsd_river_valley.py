# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The river valley: WSD, cosine, WSD-S, WSM and the annealing law
#
# **What the papers claim.** Wen et al. ("Understanding Warmup-Stable-Decay
# Learning Rates: A River Valley Loss Landscape Perspective", 2024): the loss
# landscape is a river valley; at a high constant rate the iterate bounces
# between the hillsides (the loss stays *elevated*) while moving fast along
# the river, and the decay removes the bouncing, so the loss *drops sharply*
# during the decay. Hence one long constant run serves every budget (WSD
# branches), and WSD-S, which decays at each budget and resumes from the
# decayed weights, does as well as separate WSD runs. Tian et al. (WSM, 2025):
# averaging the last window's constant-rate checkpoints with weights that
# emulate a decay matches an actual decay, with no decay phase at all. Tissue
# et al. (2024): the loss follows $L(s) = L_0 + A S_1^{-\alpha} - C S_2$ and
# two runs predict any schedule.
#
# **What ran.** `python -m experiments.reproduce river_valley` (module
# `experiments/reproductions/river_valley.py`): the transformer, Markov
# language and AdamW of `configs/river_valley.py`, every method replaying the
# library's `dynamics.step.train_step` on the same batches, over several
# seeds, evaluated on one held-out set. This notebook trains nothing: it reads
# `results/river_valley.json`, draws the figures with the module's `plot`,
# and prints what the numbers say.

# %%
from analysis import results
from analysis.results import river_valley as rv

record = results.read_result('river_valley')
numbers, setup = record['numbers'], record['numbers']['setup']
budgets = [str(b) for b in setup['budgets']]
print(results.provenance(record))
print(f"budgets {'/'.join(budgets)}, peak lr {setup['peak']}, eval every "
      f"{setup['eval_every']} steps, loss floor {setup['loss_floor']:.4f}")
print(results.redraw(rv.plot, numbers))

# %% [markdown]
# ## (a) The WSD signature
# Figure `wsd_river_valley_signature.png`: the eval loss of the constant run,
# linear WSD and cosine at the last budget and WSD-S, with their learning
# rates. Below, the drop of the linear WSD branch over its decay against the
# constant run's over the same steps (same start, same batches):

# %%
for b in budgets:
  sig = numbers['signature'][b]
  said = results.verdict(sig, 'the constant rate drops more', 'the decay drops more')
  print(f"budget {b}: decay drop {results.fmt_mean_std(sig['a'], 4)} nats, "
        f"constant rate {results.fmt_mean_std(sig['b'], 4)} ({said})")

# %% [markdown]
# ## (b) Final eval loss, every method at every budget (mean ± std over seeds)

# %%
print(f"{'method':20s}" + ''.join(f'{b:>18s}' for b in budgets))
for method in rv.METHODS:
  print(f'{method:20s}' + ''.join(
      f"{results.fmt_mean_std(numbers['final'][method][b], 4):>18s}"
      for b in budgets))
print('\nDifferences of means ± their standard error (verdicts: paired t-tests, '
      'analysis.stats):')
for key, title in (('wsd_vs_cosine', 'best WSD - cosine'),
                   ('wsds_vs_wsd', 'WSD-S - linear WSD'),
                   ('wsm_vs_constant', 'best WSM - constant checkpoint'),
                   ('wsm_vs_decay', 'best WSM - best WSD decay')):
  for b in budgets:
    c = numbers['comparisons'][key][b]
    verdict = results.verdict(c, f"{c['a_method']} lower", f"{c['b_method']} lower")
    print(f"{title:32s} {b:>5s}: {c['a_method']} - {c['b_method']} = "
          f"{c['difference']:+.4f} ± {c['stderr']:.4f} ({verdict})")

# %% [markdown]
# ## (c) The annealing law: fitted on two runs per seed, predicting the others

# %%
law = numbers['law']
print(f"fitted on {' and '.join(law['fit_on'])} (steps >= {law['min_step']}); "
      'parameters per seed:')
for p in law['params']:
  print('  ' + ', '.join(f'{k}={v:.4g}' for k, v in p.items()))
for key, err in law['final_rel_error'].items():
  role = 'fit' if key in law['fit_on'] else 'predicted'
  print(f"{key:18s} {role:9s} final-loss relative error "
        f"{results.fmt_mean_std(err, 4)}")
print(f"held-out runs: final-loss relative error mean "
      f"{results.fmt_mean_std(law['held_out_mean'], 4)}, max "
      f"{results.fmt_mean_std(law['held_out_max'], 4)} (largest: {law['worst']})")

# %% [markdown]
# ## Does this reproduction agree?
# Each claim checked on the numbers above (`river_valley.claims`); a
# comparison within two standard errors counts as a match, not a win.

# %%
print('\n'.join(results.claim_lines(rv.claims(numbers))))
