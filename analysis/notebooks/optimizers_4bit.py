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
# # Adam vs Stable-SPAM in simulated 4-bit training
#
# Huang et al. ("Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
# Adam", 2025) claim that with INT4 / FP4 weights and activations Stable-SPAM
# trains stably where Adam spikes or diverges. Stability is a property of the
# learning rate, so the reproduction sweeps it: a factor-2 grid of peak
# rates, Adam and Stable-SPAM, fake INT4 and FP4
# (`configs/stable_spam_4bit.py`, every linear layer quantized with
# straight-through gradients, no gradient clipping), several seeds.
#
# This notebook trains nothing: it reads `results/optimizers_4bit.json`,
# written by
#
#     python -m experiments.reproduce optimizers_4bit
#
# (`experiments/reproductions/optimizers_4bit.py`), and draws and prints
# what that file holds. A *loss spike* is a stretch of updates whose train
# loss exceeds 1.5x the median of the previous 20; a run *trains* when its
# losses stay finite and its final train loss gets below halfway from its
# first loss to the entropy floor of the data.

# %%
from analysis import results
from analysis.results import optimizers_4bit

record = results.read_result('optimizers_4bit')
numbers = record['numbers']
d = numbers['definitions']
print(results.provenance(record))
print(f"{d['num_steps']} steps, {d['num_parameters']:,} parameters")

# %% [markdown]
# Per format, optimizer and peak learning rate: the final eval loss (mean ±
# std over the seeds), the loss spikes of each seed's run and how many seeds
# trained.

# %%
for line in optimizers_4bit.report_lines(numbers):
  print(line)

# %% [markdown]
# Left: final eval loss vs learning rate (INT4 solid, FP4 dashed). Middle:
# spikes per run. Right: the first seed's train loss at the largest rate.

# %%
print(results.redraw(optimizers_4bit.plot, numbers))

# %%
print('\n'.join(results.claim_lines(optimizers_4bit.claims(numbers))))
