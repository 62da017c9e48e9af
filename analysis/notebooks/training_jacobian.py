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
# # The training Jacobian of a small MLP on digits
#
# Belrose & Scherlis, "Understanding Gradient Descent through the Training
# Jacobian" (2024): with data order and randomness fixed, training maps the
# initialization $\theta_0$ to $\theta_T$; its Jacobian
# $J = \partial\theta_T/\partial\theta_0$ has a *bulk* of singular values
# $\approx 1$ (directions training leaves alone), plus amplified ($>1$) and
# contracted ($<1$) ones. Their setting (`configs/jacobian.py`, as in their
# released code): a 64-64-10 GELU MLP (4,810 parameters), SGD with momentum 0.9
# and learning rate 0.1 cosine-decayed to 0, batch 64, 625 steps (25 epochs of
# 1,600 of scikit-learn's digits). Published re-runs find ~38% of singular
# values within 1e-2 of 1 on digits but ~3% when the images are white noise of
# the same shape.
#
# Part of the bulk is trivial: the first-layer weights of pixels that are 0 in
# every training image never receive a gradient, so their singular values are
# exactly 1; the results report that share separately. We then move the
# initialization along non-trivial bulk directions, along the top singular
# directions and along random ones, retrain, and compare the held-out outputs.
#
# Everything here is read from `results/training_jacobian.json`, written by
# `python -m experiments.reproduce training_jacobian` (dense Jacobians by
# `analysis.jacobian.training_jacobian` of the library's unrolled
# `train_step`). This notebook trains nothing.

# %%
from analysis import results
from analysis.results import training_jacobian as tj

record = results.read_result('training_jacobian')
numbers = record['numbers']
print(results.provenance(record))

# %% [markdown]
# ## Spectra and perturbations
#
# The next cell redraws the figures from the JSON (into
# `$DYNAMICS_FIGURES_DIR`, by default `docs/figures/`, shown below): the
# sorted singular values (first seed; green band: the bulk,
# $|s - 1| \le 10^{-2}$), and the relative change of the held-out outputs
# after retraining from the moved initialization (bars: mean over seeds; dots:
# each seed).
#
# ![training_jacobian_spectrum](../../docs/figures/training_jacobian_spectrum.png)
#
# ![training_jacobian_perturbation](../../docs/figures/training_jacobian_perturbation.png)

# %%
print(results.redraw(tj.plot, numbers))

# %% [markdown]
# ## What the numbers say
#
# Generated from the JSON; each claim is checked with the thresholds of
# `analysis/results/training_jacobian.py`.

# %%
for line in tj.summary(numbers):
  print(line)
