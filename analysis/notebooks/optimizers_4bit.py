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
# Adam", 2025) claim that with INT4/FP4 weights and activations Stable-SPAM
# is more stable than Adam -- fewer loss and gradient-norm spikes -- and
# reaches Adam's final loss in about half the steps. Here both optimizers
# train `configs/stable_spam_4bit.py` (the small GPT on the Markov language,
# every linear layer fake-quantized with straight-through gradients,
# `dynamics/quantization.py`, no gradient clipping), in INT4 and in FP4.
#
# A *spike* is a step whose train loss (or gradient norm) exceeds 1.5x the
# median of the previous 20 logged values.

# %%
import os
import sys
import tempfile

ROOT = os.path.abspath(os.getcwd())
while not os.path.isdir(os.path.join(ROOT, 'dynamics')) and ROOT != '/':
  ROOT = os.path.dirname(ROOT)
sys.path.insert(0, ROOT)
SMOKE = bool(os.environ.get('DYNAMICS_NOTEBOOK_SMOKE'))
FORMATS = ('int4',) if SMOKE else ('int4', 'fp4')
FIGURES = os.environ.get('DYNAMICS_FIGURES_DIR') or os.path.join(ROOT, 'docs', 'figures')
os.makedirs(FIGURES, exist_ok=True)

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from configs import stable_spam_4bit
from dynamics import metrics as metrics_lib
from dynamics import train

logging.set_verbosity(logging.WARNING)

# %%
def run(optimizer, fmt):
  variant = ','.join(v for v in ('adam' if optimizer == 'Adam' else '',
                                 'fp4' if fmt == 'fp4' else '',
                                 'smoke' if SMOKE else '') if v)
  config = stable_spam_4bit.get_config(variant or None)
  config.log_every = 1
  config.progress = False
  config.checkpoint.async_save = False
  workdir = tempfile.mkdtemp(prefix='4bit_')
  train.train_and_evaluate(config, workdir)
  records = metrics_lib.read_metrics(workdir)
  train_rows = [r for r in records if 'train_loss' in r]
  return dict(step=np.array([r['step'] for r in train_rows]),
              loss=np.array([r['train_loss'] for r in train_rows]),
              grad_norm=np.array([r['grad_norm'] for r in train_rows]),
              eval_loss=[r['eval_loss'] for r in records if 'eval_loss' in r][-1])


def spikes(values, window=20, factor=1.5):
  values = np.asarray(values, float)
  return int(sum(values[i] > factor * np.median(values[max(0, i - window):i])
                 for i in range(5, len(values))) + np.sum(~np.isfinite(values)))


def steps_to_reach(run_, target):
  """First logged step whose 20-step running mean of train loss is <= target."""
  loss = np.convolve(run_['loss'], np.ones(20) / 20, mode='valid')
  hit = np.nonzero(loss <= target)[0]
  return int(run_['step'][hit[0] + 19]) if len(hit) else None


runs = {(opt, fmt): run(opt, fmt) for fmt in FORMATS
        for opt in ('Adam', 'Stable-SPAM')}

# %%
print(f"{'run':>22} {'final eval':>10} {'loss spikes':>11} {'grad spikes':>11} "
      f"{'steps to Adam final':>19}")
for (opt, fmt), r in runs.items():
  adam = runs[('Adam', fmt)]
  target = float(np.mean(adam['loss'][-20:]))
  print(f'{opt + " " + fmt:>22} {r["eval_loss"]:10.4f} {spikes(r["loss"]):11d} '
        f'{spikes(r["grad_norm"]):11d} {str(steps_to_reach(r, target)):>19}')

# %%
fig, axes = plt.subplots(len(FORMATS), 2, figsize=(11, 3.6 * len(FORMATS)),
                         squeeze=False)
for row, fmt in enumerate(FORMATS):
  for opt in ('Adam', 'Stable-SPAM'):
    r = runs[(opt, fmt)]
    axes[row, 0].plot(r['step'], r['loss'], label=opt, lw=0.8)
    axes[row, 1].plot(r['step'], r['grad_norm'], label=opt, lw=0.8)
  axes[row, 0].set_title(f'{fmt}: train loss')
  axes[row, 1].set_title(f'{fmt}: gradient norm')
  axes[row, 1].set_yscale('log')
  for ax in axes[row]:
    ax.set_xlabel('step')
    ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'optimizers_4bit.png'), dpi=120)

# %% [markdown]
# ## What this comparison shows (full size, 2-core CPU, about 9 minutes)
#
# | run | final eval loss | loss spikes | grad-norm spikes | steps to Adam's final loss |
# |---|---|---|---|---|
# | Adam, INT4 | 2.7119 | 0 | 4 | 1497 |
# | Stable-SPAM, INT4 | 2.7127 | 0 | 4 | 1497 |
# | Adam, FP4 | 2.7133 | 0 | 7 | 1344 |
# | Stable-SPAM, FP4 | 2.7128 | 0 | 5 | 1344 |
#
# At this scale (108k parameters, 2,000 steps, fake quantization of the linear
# layers) 4-bit training is stable for both optimizers: no loss spikes, a few
# gradient-norm spikes each (Stable-SPAM has fewer in FP4), and the same final
# loss within 0.001. Stable-SPAM does *not* reach Adam's final loss in half the
# steps here: both cross it at the same step. The paper's claim was made for
# LLaMA models of 60M-1B parameters; this small proxy does not reproduce it.
# That is a statement about this setting, not a refutation.
