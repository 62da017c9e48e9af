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
# 1,600 of scikit-learn's digits). Published re-runs find ~38% of singular values within 1e-2 of 1 on
# digits but ~3% when the images are white noise of the same shape. We compute
# the dense Jacobian for both, then perturb the initialization along bulk and
# top singular directions and compare the final outputs.

# %%
import os
import sys
import time

ROOT = os.path.abspath(os.getcwd())
while not os.path.isdir(os.path.join(ROOT, 'dynamics')) and ROOT != '/':
  ROOT = os.path.dirname(ROOT)
sys.path.insert(0, ROOT)
SMOKE = bool(os.environ.get('DYNAMICS_NOTEBOOK_SMOKE'))
HIDDEN = 8 if SMOKE else 64
STEPS = 40 if SMOKE else 625
BULK_TOL = 1e-2
FIGURES = os.environ.get('DYNAMICS_FIGURES_DIR') or os.path.join(ROOT, 'docs', 'figures')
os.makedirs(FIGURES, exist_ok=True)

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import jacobian as jac_lib
from configs import jacobian as jacobian_config
from dynamics.runs import Run


def make_config(white_noise):
  c = jacobian_config.get_config()
  c.model.hidden_sizes = (HIDDEN,)
  c.num_steps = STEPS
  c.data.white_noise = white_noise
  return c


# %% [markdown]
# ## Dense Jacobians: digits vs white noise

# %%
results = {}
for white_noise in (False, True):
  config = make_config(white_noise)
  train_fn, params_0 = jac_lib.make_train_fn(config)
  t0 = time.time()
  jac = np.asarray(jac_lib.training_jacobian(train_fn, params_0=params_0), np.float64)
  seconds = time.time() - t0
  u, s, vt = np.linalg.svd(jac)
  split = jac_lib.spectrum_split(s, BULK_TOL)
  name = 'white noise' if white_noise else 'digits'
  results[name] = dict(config=config, train_fn=train_fn, params_0=params_0,
                       s=s, u=u, vt=vt, split=split)
  print(f"{name:>11}: {jac.shape[0]} parameters, {STEPS} steps, Jacobian in "
        f"{seconds:.1f}s; bulk {split['bulk_fraction']:.1%}, amplified "
        f"{split['amplified_fraction']:.1%}, contracted {split['contracted_fraction']:.1%}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, r in results.items():
  ax.semilogy(r['s'], label=f"{name} (bulk {r['split']['bulk_fraction']:.0%})")
ax.axhspan(1 - BULK_TOL, 1 + BULK_TOL, color='tab:green', alpha=0.3)
ax.set(xlabel='index', ylabel='singular value of dθ_T/dθ_0',
       title=f'training Jacobian, {HIDDEN}-unit MLP, {STEPS} SGD steps')
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'training_jacobian_spectrum.png'), dpi=120)
assert results['digits']['split']['bulk_fraction'] > results['white noise']['split']['bulk_fraction']

# %% [markdown]
# ## Perturbing the initialization
#
# Move $\theta_0$ by $\epsilon$ (unit directions) along bulk right singular
# vectors and along the top ones, retrain with the same data and randomness,
# and compare the network's held-out outputs with the unperturbed run's.

# %%
r = results['digits']
config, train_fn, params_0 = r['config'], r['train_fn'], r['params_0']
parts = Run(config).parts
flat0, unravel = ravel_pytree(params_0)
x_eval = jnp.asarray(parts.dataset.eval_batch(0)['inputs'])
outputs = jax.jit(lambda flat: parts.model.apply(
    {'params': train_fn(unravel(flat))}, x_eval, train=False))
base = outputs(flat0)
bulk_idx = np.flatnonzero(np.abs(r['s'] - 1) <= BULK_TOL)
pick = lambda idx: [int(i) for i in idx[:5]]
directions = {'bulk': pick(bulk_idx[np.argsort(np.abs(r['s'][bulk_idx] - 1))]),
              'top': pick(np.arange(len(r['s'])))}
eps = 1.0
change = {}
for name, idx in directions.items():
  deltas = [float(jnp.linalg.norm(outputs(flat0 + eps * jnp.asarray(r['vt'][i], flat0.dtype)) - base)
                  / jnp.linalg.norm(base)) for i in idx]
  change[name] = float(np.mean(deltas))
  print(f'{name:>4} directions (singular values {np.round(r["s"][idx], 3)}): '
        f'relative change of the final outputs {change[name]:.2e}')

fig, ax = plt.subplots(figsize=(4, 3.5))
ax.bar(list(change), list(change.values()), color=['tab:green', 'tab:red'])
ax.set(yscale='log', ylabel='relative output change', title=f'ε = {eps} at init')
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'training_jacobian_perturbation.png'), dpi=120)
assert change['top'] > 3 * change['bulk'], change

# %% [markdown]
# ## What this reproduction shows (full size, 2-core CPU)
#
# On digits 35.7% of the 4,810 singular values lie within 1e-2 of 1; with
# white-noise inputs only 3.3% do. Published re-runs of this setting report ~38%
# and ~3%. (An earlier version of `configs/jacobian.py` trained at a constant
# learning rate of 0.01 on 1,437 images instead of the reference's 0.1
# cosine-decayed on 1,600: it gave 47.5% and 9.6%, so the bulk fraction depends
# on how far training moves the weights.) Perturbing the initialization along
# bulk directions changes the final outputs by 2.0e-7 (relative), along the top
# singular directions by 8.4e-2. Part of the bulk is trivial: weights from
# pixels that are always 0 in digits never receive a gradient. The dense
# Jacobian took 2.3-3 minutes per run here (see the README's benchmarks for how
# that compares with the reference's `jax.jacfwd` on the same machine).
