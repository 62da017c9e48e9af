"""Tuned vs untuned AdamW against newer optimizers (Wen et al., 2025).

Command (the reproduction: each optimizer's peak rate searched on seed 0,
then five seeds at its best rate and at AdamW's untuned rate; AdamW and
Muon, about 10-15 minutes on 2 idle CPU cores, see
``experiments/reproductions/optimizer_speedups.py``):
  python -m experiments.reproduce optimizer_speedups

The same comparison through the sweep runner (one run directory per point):
  python -m experiments.compare --config=configs/optimizer_speedups.py \\
      --optimizers=adamw,soap --seeds=5

The setting is the GPT-3 recipe in small: AdamW (b2 0.95, weight decay 0.1
on matrices, clipping at 1), a WSD schedule, and the untuned peak rate 1e-3,
a common default; the 2-layer GPT of ``configs/wsd.py`` on the Markov
language, 300 steps of 32 x 64 tokens. What you should see: at its tuned
rate AdamW ends well below its untuned self, and the newer optimizers'
speedups over tuned AdamW are much smaller than over untuned AdamW.

Variants: ``:smoke`` (seconds, for tests).
"""

import ml_collections

from configs import base
from configs import wsd


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = wsd.get_config()
  c.update(name='optimizer_speedups', num_steps=300, eval_every=50)
  # learning_rate: The untuned rate.
  c.optimizer.update(learning_rate=1e-3, weight_decay=0.1, clip_norm=1.0)
  c.schedule.warmup_steps = 30
  c.checkpoint.every_steps = 300
  return base.apply_variants(c, arg, {'smoke': smoke},
                             'configs/optimizer_speedups.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The wsd smoke transformer, 40 steps."""
  wsd.smoke(c)
  c.schedule.warmup_steps = 4
  return c
