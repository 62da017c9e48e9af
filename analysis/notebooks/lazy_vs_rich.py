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
# the same knob. Here, on the teacher-student regression of
# `configs/lazy_rich.py`:
#
# 1. kernel distance from init and relative parameter change shrink as
#    $\alpha$ grows, and the kernel's label alignment rises only for small
#    $\alpha$;
# 2. at fixed $\alpha=1$, the kernel moves less as the width grows, in the
#    standard and in the NTK parametrization.
#
# The centering $g(x;\theta) - g(x;\theta_0)$ and the $1/\alpha^2$ loss are done in
# the small training loop below (the core's `output_scale` only multiplies).

# %%
import os
import sys
import time

ROOT = os.path.abspath(os.getcwd())
while not os.path.isdir(os.path.join(ROOT, 'dynamics')) and ROOT != '/':
  ROOT = os.path.dirname(ROOT)
sys.path.insert(0, ROOT)
SMOKE = bool(os.environ.get('DYNAMICS_NOTEBOOK_SMOKE'))
ALPHAS = (0.03, 0.3, 3.0, 30.0)
WIDTH = 64 if SMOKE else 512
WIDTHS = (16, 64) if SMOKE else (64, 256, 1024, 4096)
STEPS = 60 if SMOKE else 2000
NUM_TRAIN = 64 if SMOKE else 256
LEARNING_RATE = 0.5
FIGURES = os.environ.get('DYNAMICS_FIGURES_DIR') or os.path.join(ROOT, 'docs', 'figures')
os.makedirs(FIGURES, exist_ok=True)

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from analysis import ntk as ntk_lib
from configs import lazy_rich
from dynamics import data as data_lib

config = lazy_rich.get_config()
config.data.num_train = NUM_TRAIN
dataset = data_lib.get_dataset(config)
x_train = jnp.asarray(dataset.full_batch()['inputs'])
y_train = jnp.asarray(dataset.full_batch()['targets']).reshape(NUM_TRAIN, -1)
y_train = y_train / jnp.std(y_train)
print(x_train.shape, y_train.shape)


# %% [markdown]
# A one-hidden-layer ReLU network in the standard parametrization
# ($W \sim \mathcal N(0, 1/\text{fan-in})$) or the NTK parametrization
# ($W \sim \mathcal N(0, 1)$, activations divided by $\sqrt{\text{fan-in}}$),
# trained by full-batch gradient descent.

# %%
def init(key, width, param='ntk', d=x_train.shape[1]):
  k1, k2 = jax.random.split(key)
  std1, std2 = (1.0, 1.0) if param == 'ntk' else (1 / np.sqrt(d), 1 / np.sqrt(width))
  return {'w1': std1 * jax.random.normal(k1, (d, width)),
          'w2': std2 * jax.random.normal(k2, (width, 1))}


def g(params, x, param='ntk'):
  d, width = params['w1'].shape
  s1, s2 = (1 / np.sqrt(d), 1 / np.sqrt(width)) if param == 'ntk' else (1.0, 1.0)
  return s2 * jax.nn.relu(s1 * x @ params['w1']) @ params['w2']


def train(alpha, width, param='ntk', steps=STEPS, lr=LEARNING_RATE, seed=0):
  """GD on (1/alpha^2) * 0.5 * mean (alpha (g - g_0) - y)^2; NTK stats at start/end."""
  params0 = init(jax.random.key(seed), width, param)
  g0 = g(params0, x_train, param)
  apply_fn = lambda p, x: g(p, x, param)

  def loss(p):
    f = alpha * (g(p, x_train, param) - g0)
    return 0.5 * jnp.mean((f - y_train) ** 2) / alpha ** 2

  @jax.jit
  def run(p):
    return jax.lax.fori_loop(0, steps, lambda i, p: jax.tree.map(
        lambda a, b: a - lr * b, p, jax.grad(loss)(p)), p)

  params = run(params0)
  k0 = ntk_lib.empirical_ntk(apply_fn, params0, x_train)
  kt = ntk_lib.empirical_ntk(apply_fn, params, x_train)
  return {
      'alpha': alpha, 'width': width, 'param': param,
      'final_loss': float(loss(params) * alpha ** 2),
      'kernel_distance': float(ntk_lib.kernel_distance(k0, kt)),
      'param_change': float(ntk_lib.relative_param_change(params0, params)),
      'alignment_init': float(ntk_lib.kernel_alignment(k0, y_train)),
      'alignment_final': float(ntk_lib.kernel_alignment(kt, y_train)),
  }


# %% [markdown]
# ## 1. The $\alpha$ sweep

# %%
t0 = time.time()
rows = [train(a, WIDTH) for a in ALPHAS]
for r in rows:
  print(f"alpha={r['alpha']:>6}: loss {r['final_loss']:.3f}  kernel distance "
        f"{r['kernel_distance']:.2e}  param change {r['param_change']:.2e}  "
        f"alignment {r['alignment_init']:.3f} -> {r['alignment_final']:.3f}")
print(f'{time.time() - t0:.1f}s')

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
a = [r['alpha'] for r in rows]
axes[0].loglog(a, [r['kernel_distance'] for r in rows], 'o-', label='kernel distance from init')
axes[0].loglog(a, [r['param_change'] for r in rows], 's--', label='relative parameter change')
axes[0].set(xlabel='alpha (output scale)', title='lazy as alpha grows')
axes[0].legend()
axes[1].semilogx(a, [r['alignment_init'] for r in rows], 'o-', label='at init')
axes[1].semilogx(a, [r['alignment_final'] for r in rows], 's-', label='after training')
axes[1].set(xlabel='alpha', ylabel='centered kernel-label alignment',
            title='alignment rises only when rich')
axes[1].legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'lazy_vs_rich_alpha.png'), dpi=120)

# %%
# The claims of this notebook, checked: the kernel and the parameters move
# less as alpha grows, and only the richest run gains alignment.
dist = [r['kernel_distance'] for r in rows]
change = [r['param_change'] for r in rows]
assert all(x > y for x, y in zip(dist, dist[1:])), dist
assert all(x > y for x, y in zip(change, change[1:])), change
gain = [r['alignment_final'] - r['alignment_init'] for r in rows]
assert gain[0] > 10 * abs(gain[-1]), gain

# %% [markdown]
# ## 2. Width: the kernel moves less in wider networks ($\alpha = 1$)

# %%
# The standard parametrization's NTK grows like the width, so its stable
# learning rate shrinks like 1/width; the NTK parametrization keeps one rate.
lr_for = lambda param, w: 8.0 / w if param == 'standard' else LEARNING_RATE
wrows = [train(1.0, w, param, lr=lr_for(param, w))
         for param in ('standard', 'ntk') for w in WIDTHS]
for r in wrows:
  print(f"{r['param']:>8} width {r['width']:>5}: kernel distance "
        f"{r['kernel_distance']:.2e}  param change {r['param_change']:.2e}  "
        f"loss {r['final_loss']:.3f}")

fig, ax = plt.subplots(figsize=(5, 3.8))
for param, marker in (('standard', 'o-'), ('ntk', 's--')):
  sel = [r for r in wrows if r['param'] == param]
  ax.loglog([r['width'] for r in sel], [r['kernel_distance'] for r in sel], marker,
            label=f'{param} parametrization')
ax.set(xlabel='width', ylabel='kernel distance from init', title='alpha = 1')
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'lazy_vs_rich_width.png'), dpi=120)
for param in ('standard', 'ntk'):
  d = [r['kernel_distance'] for r in wrows if r['param'] == param]
  assert d[-1] < d[0], (param, d)
