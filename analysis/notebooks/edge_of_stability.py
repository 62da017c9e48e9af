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
# # The edge of stability: GD, SAM and small-batch SGD
#
# On a quadratic with top curvature $\lambda$, gradient descent with step
# $\eta$ diverges once $\lambda > 2/\eta$. Cohen et al. ("Gradient Descent on
# Neural Networks Typically Occurs at the Edge of Stability", ICLR 2021) found
# that full-batch GD on neural networks drives the sharpness
# $\lambda_{\max}(\nabla^2 L)$ *up* (progressive sharpening) until it reaches
# $2/\eta$, and then hovers there while the loss keeps decreasing,
# non-monotonically. On the noisy teacher-student regression of
# `configs/eos.py` (tanh MLP, MSE):
#
# 1. **GD** at three learning rates: sharpness rises, then sits at $2/\eta$.
# 2. **Unnormalized SAM**, $w \leftarrow w - \eta\nabla L(w + \rho\nabla L(w))$
#    (the library's `sam_gradient` with `optimizer.sam.normalize=False`): on a
#    quadratic it is stable while $\eta\lambda(1 + \rho\lambda) < 2$
#    (Agarwala & Dauphin, ICML 2023), so its sharpness should settle below
#    GD's, at the root $\lambda^* = (\sqrt{1 + 8\rho/\eta} - 1)/(2\rho)$.
# 3. **Small-batch SGD**: Wu & Su (ICML 2023) show that a minimum linearly
#    stable for SGD has $\mathrm{tr}\,H \le 2/\eta$, where GD's stability bounds
#    only $\lambda_{\max}$; we follow the trace of the training-loss Hessian
#    along SGD and GD.
#
# Everything here is read from `results/edge_of_stability.json`, written by
# `python -m experiments.reproduce edge_of_stability` (the runs go through
# `dynamics.train.train_and_evaluate`; sharpness by warm-started Lanczos,
# `analysis.hessian.top_eigenpairs`, traces by Hutchinson,
# `analysis.hessian.trace`, both on the whole training set). This notebook
# trains nothing: it draws the figures and prints the conclusions from the
# numbers.

# %%
from analysis import results
from analysis.results import edge_of_stability as eos

record = results.read_result('edge_of_stability')
numbers = record['numbers']
print(results.provenance(record))

# %% [markdown]
# ## The figures
#
# The next cell redraws them from the JSON (into `$DYNAMICS_FIGURES_DIR`, by
# default `docs/figures/`, shown below): full-batch GD's sharpness (every
# seed; dashed: $2/\eta$) and training loss; unnormalized SAM against GD at
# the same $\eta$ (dashed: the predicted $\lambda^*$); the Hessian traces of
# SGD and GD.
#
# ![eos_gd_sharpness](../../docs/figures/eos_gd_sharpness.png)
#
# ![eos_sam_sharpness](../../docs/figures/eos_sam_sharpness.png)
#
# ![eos_sgd_trace](../../docs/figures/eos_sgd_trace.png)

# %%
print(results.redraw(eos.plot, numbers))

# %% [markdown]
# ## What the numbers say
#
# Generated from the JSON: "within noise" when two means differ by less than
# two standard errors over the seeds; each claim is checked with the
# tolerance of `analysis/results/edge_of_stability.py`.

# %%
for line in eos.summary(numbers):
  print(line)
