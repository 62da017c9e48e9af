# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Learning-rate sensitivity with qk-norm and z-loss
#
# Wortsman et al. ("Small-scale proxies for large-scale Transformer training
# instabilities", 2023) reproduce two large-model instabilities at small
# scale by raising the learning rate: **attention-logit growth** (the largest
# $q\cdot k$ logit grows until attention entropy collapses; qk-norm fixes it)
# and **output-logit divergence** (the log-partition $\log Z$ of the output
# softmax drifts; the z-loss $10^{-4}\log^2 Z$ fixes it). Their summary is
# the *LR sensitivity* (Eq. 1): the mean over a grid of learning rates of
# $\min(\ell(\eta), \ell_0) - \min_\eta \ell(\eta)$, with $\ell_0$ the loss
# at initialization ($\log V$); lower is more robust.
#
# This notebook trains nothing: it reads `results/lr_sensitivity.json`,
# written by
#
#     python -m experiments.reproduce lr_sensitivity
#
# (`experiments/reproductions/lr_sensitivity.py`: `configs/lr_sensitivity.py`
# over a factor-2 grid of peak rates, the baseline and qk-norm + z-loss,
# several seeds), and draws and prints what that file holds.

# %%
from analysis import results
from analysis.results import lr_sensitivity

record = results.read_result('lr_sensitivity')
numbers = record['numbers']
setup = numbers['setup']
print(results.provenance(record))
print(f"{setup['num_steps']} steps at batch "
      f"{setup['batch_size']}, loss at init {setup['loss_at_init']:.3f}")

# %% [markdown]
# Final eval loss per variant and peak rate (mean ± std over the seeds; a
# run whose loss ends non-finite or above the loss at init is *capped* at
# it), the largest attention logit of the final parameters, and each
# variant's LR sensitivity.

# %%
for line in lr_sensitivity.report_lines(numbers):
  print(line)

# %% [markdown]
# Final eval loss vs learning rate (left), and the two instability probes
# of the final parameters: the largest attention logit (middle) and the mean
# $\log Z$ of the output (right).

# %%
print(results.redraw(lr_sensitivity.plot, numbers))

# %%
print('\n'.join(results.claim_lines(lr_sensitivity.claims(numbers))))
