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
# # Lazy vs rich training, seen through the NTK
#
# Chizat, Oyallon & Bach ("On Lazy Training in Differentiable Programming",
# 2019) scale a model's output by $\alpha$ and its loss by $1/\alpha^2$:
# $f_\alpha(x) = \alpha\,(g(x;\theta) - g(x;\theta_0))$, loss
# $\frac{1}{\alpha^2}\,\ell(f_\alpha)$. Large $\alpha$ gives *lazy* training (the
# NTK barely moves, the parameters barely move, the model is its
# linearization); small $\alpha$ gives *rich* training (features, hence the
# kernel, change and the kernel aligns with the labels). Kumar et al.
# ("Grokking as the Transition from Lazy to Rich Training Dynamics", 2024) use
# the same knob. At fixed $\alpha$, wider networks are lazier (Jacot et al.,
# 2018; Lee et al., 2019).
#
# **What ran.** `python -m experiments.reproduce lazy_vs_rich` (module
# `experiments/reproductions/lazy_vs_rich.py`): the teacher-student regression
# and ReLU MLP of `configs/lazy_rich.py`, trained by
# `dynamics.train.train_and_evaluate` with the library's knobs:
# `model.output_scale` ($\alpha$), `model.antisymmetric_init` (their
# symmetrized init, output 0 at init, so $\alpha g$ is the centered model), the
# SGD rate divided by $\alpha^2$, `model.parametrization`; the NTK probe
# (`analysis.probes.NTKProbe`) measures the kernel at the first and last step.
# This notebook trains nothing: it reads `results/lazy_vs_rich.json`, draws the
# figures with the module's `plot` and prints what the numbers say.

# %%
from analysis import results
from analysis.results import lazy_vs_rich as lvr

record = results.read_result('lazy_vs_rich')
numbers = record['numbers']
print(results.provenance(record))
print(f"{numbers['num_steps']} SGD steps per run")
print(results.redraw(lvr.plot, numbers))

# %% [markdown]
# ## 1. The $\alpha$ sweep (mean ± std over the seeds)

# %%
a = numbers['alpha']
print(f"width {a['width']}, standard parametrization")
for i, alpha in enumerate(a['alphas']):
  print(f"alpha={alpha:>6g}: eval loss {results.fmt_mean_std(a['eval_loss'][i], 4)}"
        f"  kernel distance {a['kernel_distance'][i]['mean']:.2e}"
        f" ± {a['kernel_distance'][i]['std']:.1e}"
        f"  param change {a['param_change'][i]['mean']:.2e}"
        f"  alignment {a['alignment_init'][i]['mean']:.3f} -> "
        f"{a['alignment_final'][i]['mean']:.3f}"
        f" (gain {results.fmt_mean_std(a['alignment_gain'][i], 3)})")

# %% [markdown]
# ## 2. Width: does the kernel move less in wider networks?

# %%
for p in [p for p in lvr.PARAMETRIZATIONS if p in numbers['width']]:
  w = numbers['width'][p]
  for i, width in enumerate(w['widths']):
    print(f"{p:>8s} width {width:>5d} (alpha {w['alpha']:g}): kernel distance "
          f"{w['kernel_distance'][i]['mean']:.2e} ± {w['kernel_distance'][i]['std']:.1e}"
          f"  param change {w['param_change'][i]['mean']:.2e}"
          f"  eval loss {results.fmt_mean_std(w['eval_loss'][i], 4)}")

# %% [markdown]
# ## Does this reproduction agree?
# Each claim checked on the numbers above (`lazy_vs_rich.claims`).

# %%
print('\n'.join(results.claim_lines(lvr.claims(numbers))))
