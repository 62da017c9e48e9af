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
# the *LR sensitivity*: final loss as a function of the learning rate over
# orders of magnitude.
#
# This notebook trains `configs/lr_sensitivity.py` (the same settings the
# sweep command in its docstring uses) over a grid of learning rates, for
# the baseline and for qk-norm + z-loss, with its own small loop over
# `dynamics.train.train_and_evaluate`, and plots final eval loss and the
# stability probes vs learning rate.

# %%
import json
import os
import sys
import tempfile

ROOT = os.path.abspath(os.getcwd())
while not os.path.isdir(os.path.join(ROOT, 'dynamics')) and ROOT != '/':
  ROOT = os.path.dirname(ROOT)
sys.path.insert(0, ROOT)
SMOKE = bool(os.environ.get('DYNAMICS_NOTEBOOK_SMOKE'))
LEARNING_RATES = (1e-3, 1e-1) if SMOKE else (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FIGURES = os.environ.get('DYNAMICS_FIGURES_DIR') or os.path.join(ROOT, 'docs', 'figures')
os.makedirs(FIGURES, exist_ok=True)

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from configs import lr_sensitivity
from dynamics import metrics as metrics_lib
from dynamics import train

logging.set_verbosity(logging.WARNING)

VARIANTS = {
    'baseline': dict(qk_norm=False, z_loss=0.0),
    'qk-norm + z-loss': dict(qk_norm=True, z_loss=1e-4),
}

# %%
def run(lr, qk_norm, z_loss):
  config = lr_sensitivity.get_config('smoke' if SMOKE else None)
  config.optimizer.learning_rate = lr
  config.model.qk_norm = qk_norm
  config.loss.z_loss = z_loss
  config.progress = False
  config.checkpoint.async_save = False
  if SMOKE:  # Seconds per run: only the code path is exercised.
    config.num_steps, config.log_every, config.eval_every = 10, 5, 10
    config.checkpoint.every_steps = 10
  workdir = tempfile.mkdtemp(prefix='lr_sensitivity_')
  train.train_and_evaluate(config, workdir)
  records = metrics_lib.read_metrics(workdir)
  final = [r for r in records if 'eval_loss' in r][-1]
  probes = [r for r in records if 'output_log_z' in r]
  attn = max(v for r in probes for k, v in r.items()
             if k.startswith('layers/attn_logit_max/'))
  log_z = max(abs(r['output_log_z']) for r in probes)
  loss = final['eval_loss'] if np.isfinite(final['eval_loss']) else np.nan
  return dict(eval_loss=loss, attn_logit_max=attn, max_abs_log_z=log_z)

results = {name: [run(lr, **kw) for lr in LEARNING_RATES]
           for name, kw in VARIANTS.items()}
print(f"{'variant':>18} " + ' '.join(f'{lr:>9.0e}' for lr in LEARNING_RATES))
for name, rows in results.items():
  print(f'{name:>18} ' + ' '.join(f"{r['eval_loss']:9.4f}" for r in rows))

# %% [markdown]
# Final eval loss vs learning rate (left), and the two instability probes:
# the largest attention logit (middle) and the largest $|\log Z|$ (right)
# seen during training.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for name, rows in results.items():
  for ax, key in zip(axes, ('eval_loss', 'attn_logit_max', 'max_abs_log_z')):
    ax.plot(LEARNING_RATES, [r[key] for r in rows], 'o-', label=name)
for ax, title in zip(axes, ('final eval loss', 'max attention logit',
                            'max |log Z| of the output')):
  ax.set_xscale('log')
  ax.set_xlabel('learning rate')
  ax.set_title(title)
axes[1].set_yscale('log')
axes[0].legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'lr_sensitivity.png'), dpi=120)

# %% [markdown]
# **LR sensitivity** (Wortsman et al., Eq. 1): the mean over learning rates of
# $\min(\ell(\eta), \ell_0) - \min_\eta \ell(\eta)$, with $\ell_0$ the loss at
# initialization ($\log V$); lower is more robust to the learning rate.

# %%
def sensitivity(rows, loss0):
  losses = np.array([r['eval_loss'] for r in rows], float)
  losses = np.where(np.isfinite(losses), losses, loss0)
  return float(np.mean(np.minimum(losses, loss0) - np.min(losses)))

loss0 = float(np.log(lr_sensitivity.get_config('smoke' if SMOKE else None)
                     .data.vocab_size))
for name, rows in results.items():
  print(f'LR sensitivity of {name}: {sensitivity(rows, loss0):.4f}')
