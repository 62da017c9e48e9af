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

# %% tags=["parameters"]
# Size: DYNAMICS_NOTEBOOK_SMOKE=1 (CI) uses configs/river_valley.py:smoke.
import os
SMOKE = bool(int(os.environ.get('DYNAMICS_NOTEBOOK_SMOKE', '0')))
FIGURES = os.environ.get('DYNAMICS_FIGURES_DIR', 'docs/figures')

# %% [markdown]
# # The river valley: WSD, WSD-S and WSM on a CPU
#
# **What the papers claim.** Wen et al. ("Understanding Warmup-Stable-Decay
# Learning Rates: A River Valley Loss Landscape Perspective", 2024): the loss
# landscape is a river valley; at a high constant rate the iterate bounces
# between the hillsides (loss stays *elevated*) while still moving fast along
# the river, and the decay removes the bouncing, so the loss *drops sharply*
# during the decay. Hence one long constant run serves every budget (WSD
# branches), and WSD-S, which decays at each budget and then resumes from the
# decayed weights, does as well as or better than separate WSD runs. Tian et al.
# (WSM, 2025): averaging the constant-rate checkpoints of the last window with
# weights that emulate a decay matches or beats an actual decay, with no decay
# phase at all. Tissue et al. (2024): the loss follows
# L(s) = L0 + A S1^-alpha - C S2 and two runs predict any schedule.
#
# **What we run.** The synthetic Markov language (entropy rate known), a tiny
# transformer and AdamW, from `configs/river_valley.py`. Every method uses the
# core's `dynamics.step.train_step` (the very update of
# `train_and_evaluate`), run in a `lax.scan` whose learning rate is an input
# table, so all methods share one compilation and the same data order. WSD
# runs are branches of the constant run (what `--config.branch.*` does on the
# command line) and WSM merges use `dynamics.merging`.

# %%
import functools
import sys

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, os.path.abspath('.'))
matplotlib.use('Agg')
from analysis import annealing_law as law  # noqa: E402
from configs import river_valley  # noqa: E402
from dynamics import merging, optim, schedules  # noqa: E402
from dynamics import step as step_lib  # noqa: E402
from dynamics.runs import Run  # noqa: E402

config = river_valley.get_config('smoke' if SMOKE else None)
BUDGETS = tuple(config.schedule.budgets)
T = BUDGETS[-1]
PEAK, WARMUP = config.optimizer.learning_rate, config.schedule.warmup_steps
FRACTION, EVERY = config.schedule.decay_fraction, config.eval_every
INTERVAL, WINDOW_FRACTION = config.merge.interval, config.schedule.decay_fraction
os.makedirs(FIGURES, exist_ok=True)
run_handle = Run(config)
parts = run_handle.parts
FLOOR = parts.dataset.info.loss_floor  # Entropy rate: the best possible loss.
print(f'budgets {BUDGETS}, peak lr {PEAK}, eval every {EVERY} steps, '
      f'loss floor {FLOOR:.4f}')

# %%
# The same batches for every method, generated once.
batches = [parts.dataset.train_batch(i) for i in range(T)]
inputs_TxBxL = jnp.asarray(np.stack([b['inputs'] for b in batches]))
targets_TxBxL = jnp.asarray(np.stack([b['targets'] for b in batches]))
eval_batches = [jax.tree.map(jnp.asarray, parts.dataset.eval_batch(i))
                for i in range(config.eval_batches)]
eval_fn = run_handle.eval_step


def eval_loss(params, model_state):
  return float(np.mean([eval_fn(params, model_state, b)['loss']
                        for b in eval_batches]))


@functools.partial(jax.jit, static_argnums=3)
def run_chunk(state, lr_table_T, start, length):
  """``length`` updates from ``state`` with rates ``lr_table_T[step]``."""
  schedule = lambda count: lr_table_T[jnp.minimum(count, T - 1)]
  tx = optim.build_optimizer(config.optimizer, schedule)

  def body(st, t):
    batch = {'inputs': inputs_TxBxL[t], 'targets': targets_TxBxL[t]}
    st, _ = step_lib.train_step(st, batch, model=parts.model, tx=tx,
                                schedule=schedule, options=parts.options)
    return st, None

  state, _ = jax.lax.scan(body, state, start + jnp.arange(length))
  return state


def run(schedule, state, start, stop, keep=()):
  """Trains [start, stop) with ``schedule``; eval curve and kept states."""
  table = jnp.asarray(law.schedule_values(schedule, T), jnp.float32)
  steps, losses, kept = [], [], {}
  step = start
  while step < stop:
    length = min(EVERY - step % EVERY, stop - step)
    state = run_chunk(state, table, step, length)
    step += length
    if step % EVERY == 0 or step == stop:
      steps.append(step)
      losses.append(eval_loss(state.params, state.model_state))
    if step in keep:
      kept[step] = state
  return np.array(steps), np.array(losses), state, kept


state0 = run_handle.init_state()
decay_steps = {b: int(round(FRACTION * b)) for b in BUDGETS}

# %%
# Constant rate (the stable phase every WSD run shares), keeping the states
# that WSD branches start from and the WSM checkpoints.
branch_points = {b - d for b, d in decay_steps.items()}
merge_points = set(range(INTERVAL, T + 1, INTERVAL))
const_sched = schedules.constant(PEAK, WARMUP)
c_steps, c_losses, _, const_states = run(const_sched, state0, 0, T,
                                         keep=branch_points | merge_points)
curves = {'constant': law.Curve(c_steps, c_losses,
                                law.schedule_values(const_sched, T),
                                'constant')}
final = {}  # (method, budget) -> final eval loss

for shape in schedules.DECAY_SHAPES:
  for b in BUDGETS:
    start = b - decay_steps[b]
    sched = schedules.wsd(PEAK, b, WARMUP, decay_steps[b] / b,
                          shape)
    s, l, _, _ = run(sched, const_states[start], start, b)
    final[(f'WSD {shape}', b)] = l[-1]
    before = c_steps <= start
    curves[f'wsd-{shape}-{b}'] = law.Curve(
        np.concatenate([c_steps[before], s]),
        np.concatenate([c_losses[before], l]),
        law.schedule_values(sched, T), f'WSD {shape} {b}')

for b in BUDGETS:
  sched = schedules.warmup_cosine(PEAK, b, WARMUP)
  s, l, _, _ = run(sched, state0, 0, b)
  final[('cosine', b)] = l[-1]
  curves[f'cosine-{b}'] = law.Curve(s, l, law.schedule_values(sched, T),
                                    f'cosine {b}')

wsds_sched = schedules.wsd_s(PEAK, BUDGETS, WARMUP, FRACTION, 'linear')
s, l, _, _ = run(wsds_sched, state0, 0, T)
curves['wsd_s'] = law.Curve(s, l, law.schedule_values(wsds_sched, T), 'WSD-S')
for b in BUDGETS:
  final[('WSD-S linear', b)] = l[list(s).index(b)]

for shape in ('uniform', '1-sqrt', 'cosine'):  # 'linear' merges = 'uniform'.
  for b in BUDGETS:
    window = max(INTERVAL, INTERVAL * round(WINDOW_FRACTION * b / INTERVAL))
    steps = merging.window_steps(b, window, INTERVAL)
    params = merging.merge_params((const_states[t].params for t in steps),
                                  merging.merge_weights(shape, len(steps)))
    final[(f'WSM {shape}', b)] = eval_loss(params, const_states[b].model_state)
for b in BUDGETS:
  final[('constant (no decay)', b)] = c_losses[list(c_steps).index(b)]

# %% [markdown]
# ## (a) The WSD signature
# Loss stays elevated during the constant-rate stable phase and drops sharply
# in each decay; WSD-S drops at every budget and climbs back when the rate
# returns to the peak.

# %%
fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                gridspec_kw={'height_ratios': [3, 1]})
b = BUDGETS[-1]
for key, color in (('constant', 'k'), (f'wsd-linear-{b}', 'C0'),
                   (f'cosine-{b}', 'C1'), ('wsd_s', 'C2')):
  c = curves[key]
  ax.plot(c.steps, c.losses, color=color, label=c.name)
  ax_lr.plot(np.arange(T), c.lrs, color=color)
ax.set_ylabel('eval loss')
ax.set_ylim(top=float(np.percentile(curves['constant'].losses, 90)))
ax.legend()
ax.set_title('WSD: elevated plateau, sharp drop in the decay')
ax_lr.set_ylabel('learning rate')
ax_lr.set_xlabel('step')
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'wsd_river_valley_signature.png'), dpi=120)

# %% [markdown]
# ## (b) Final eval loss, every method at every budget

# %%
methods = sorted({m for m, _ in final}, key=lambda m: (
    m.split()[0] != 'cosine', m))
header = f"{'method':24s}" + ''.join(f'{b:>10d}' for b in BUDGETS)
lines = [header, '-' * len(header)]
for m in methods:
  lines.append(f'{m:24s}' + ''.join(f'{final[(m, b)]:10.4f}' for b in BUDGETS))
table = '\n'.join(lines)
print(table)
best = {b: min((final[(m, b)], m) for m in methods) for b in BUDGETS}
for b in BUDGETS:
  print(f'budget {b}: best {best[b][1]} ({best[b][0]:.4f})')

fig, ax = plt.subplots(figsize=(7, 4))
for i, m in enumerate(methods):
  ax.plot(BUDGETS, [final[(m, b)] for b in BUDGETS], marker='o', label=m,
          color=f'C{i % 10}', ls='-' if i < 10 else '--')
ax.set_xlabel('budget (steps)')
ax.set_ylabel('final eval loss')
ax.legend(fontsize=7, ncol=2)
ax.set_title('Final loss across methods and budgets')
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'wsd_river_valley_final_loss.png'), dpi=120)

# %% [markdown]
# ## (c) The annealing law: fit on two runs, predict the others
# Fitted on the constant run and the linear WSD run at the largest budget;
# every other curve is a prediction.

# %%
fit_names = ('constant', f'wsd-linear-{BUDGETS[-1]}')
min_step = 2 * WARMUP
params = law.fit([curves[n] for n in fit_names], min_step=min_step)
print(params)
errors = {}
for key, c in curves.items():
  keep = c.steps >= min_step
  errors[key] = law.prediction_error(params, c._replace(
      steps=c.steps[keep], losses=c.losses[keep]))
held_out = [k for k in curves if k not in fit_names]
mean_final = np.mean([errors[k]['final_rel_error'] for k in held_out])
max_final = max(errors[k]['final_rel_error'] for k in held_out)
for k in curves:
  print(f"{k:20s} {'fit' if k in fit_names else 'predicted':9s} "
        f"mean rel err {errors[k]['mean_rel_error']:.4f}  final "
        f"{errors[k]['final_rel_error']:.4f}")
print(f'held-out runs: final-loss relative error mean {mean_final:.4f}, '
      f'max {max_final:.4f}')

fig, ax = plt.subplots(figsize=(7, 4.5))
shown = [curves[k] for k in ('constant', f'wsd-linear-{BUDGETS[-1]}',
                             f'wsd-1-sqrt-{BUDGETS[0]}', f'cosine-{BUDGETS[-1]}',
                             'wsd_s')]
law.plot_fit(params, shown, fitted=[curves[n].name for n in fit_names], ax=ax)
ax.set_ylim(top=float(np.percentile(curves['constant'].losses, 90)))
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, 'wsd_river_valley_annealing_law.png'),
            dpi=120)

# %% [markdown]
# ## Does this reproduction agree?
# The cell below states the verdict from the numbers above (it is computed,
# not written in advance, so it stays honest when the size changes). At the
# CI (smoke) size on a 2-core CPU we observed: the WSD signature and
# "WSD matches or beats cosine" hold clearly; WSM merges beat the raw
# constant-rate checkpoint but stay ~0.01 nats short of an actual decay at the
# smallest budget; WSD-S trails the WSD branch at later budgets by ~0.01 (its
# re-warm after each decay costs more than it gains at this tiny scale, unlike
# the paper's LLM runs); the annealing law fits the two runs to <1% but
# over-predicts the benefit of long cosine decays (several % error), a known
# sensitivity to lambda (the annealing memory of 1/(1-lambda) = 1000 steps is
# longer than these runs). These are small-scale, single-seed results.
#
# At full size (budgets 600/1200/1800, one seed, 2-core CPU, about 2 minutes):
# the decay drops the loss 0.03-0.04 nats below the constant-rate plateau at
# every budget; the best WSD branch is within 0.001 of cosine (cosine is ahead
# by 0.0001-0.0005 at the two later budgets, inside the eval noise); WSD-S is
# within 0.01 of the linear WSD branch; WSM merges beat the raw checkpoint by
# 0.02-0.03 but stay 0.01-0.02 short of an actual decay; the annealing law,
# fitted on the constant run and linear WSD at 1800, predicts the held-out
# final losses to 0.84% on average and 2.6% at worst (long cosine again).

# %%
wsd_best = {b: min(final[(f'WSD {s}', b)] for s in schedules.DECAY_SHAPES)
            for b in BUDGETS}
drop = {b: final[('constant (no decay)', b)] - wsd_best[b] for b in BUDGETS}
claims = {
    'decay drops the loss below the constant-rate plateau (WSD signature)':
        all(d > 0 for d in drop.values()),
    'best WSD branch matches or beats cosine at every budget (within 0.01)':
        all(wsd_best[b] <= final[('cosine', b)] + 0.01 for b in BUDGETS),
    'WSD-S matches or beats the linear WSD branch (within 0.01) at later budgets':
        all(final[('WSD-S linear', b)] <= final[('WSD linear', b)] + 0.01
            for b in BUDGETS[1:]),
    'best WSM merge beats the constant-rate checkpoint':
        all(min(final[(f'WSM {s}', b)] for s in ('uniform', '1-sqrt', 'cosine'))
            < final[('constant (no decay)', b)] for b in BUDGETS),
    'best WSM merge matches an actual decay (within 0.01)':
        all(min(final[(f'WSM {s}', b)] for s in ('uniform', '1-sqrt', 'cosine'))
            <= wsd_best[b] + 0.01 for b in BUDGETS),
    'annealing law predicts held-out final losses within 2%':
        max_final < 0.02,
}
for claim, holds in claims.items():
  print(f"{'AGREES   ' if holds else 'DISAGREES'} {claim}")
print(f"(decay gain over the plateau per budget: "
      f"{ {b: round(float(d), 4) for b, d in drop.items()} }; size: "
      f"{'smoke' if SMOKE else 'full'})")
