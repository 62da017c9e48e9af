"""The river valley on a CPU: WSD-S on the synthetic Markov language.

Command:
  python -m experiments.main --config=configs/river_valley.py

What you should see (2 CPU cores, a few minutes): a small transformer (2 layers,
width 64) trained on the embedded Markov language with one WSD-S run: the eval
loss plateaus in each stable phase and drops sharply in each of the three
decays, ending at the budgets 600, 1200 and 1800, whose decayed checkpoints are
kept in ``runs/river_valley/checkpoints`` (with one every 50 steps for WSM
merging). The same config serves the other methods of the comparison:

  # WSM: a constant-rate run, then a merge emulating a 1-sqrt decay.
  python -m experiments.main --config=configs/river_valley.py \\
      --config.schedule.name=constant --workdir=runs/rv-constant
  python -m experiments.merge --workdir=runs/rv-constant --window=300 \\
      --shape=1-sqrt --step=1200
  # WSD: a decay branch from the constant run's stable phase.
  python -m experiments.main --config=configs/river_valley.py \\
      --config.schedule.name=constant --config.branch.from_workdir=runs/rv-constant \\
      --config.branch.from_step=900 --config.branch.decay_steps=300 \\
      --workdir=runs/rv-b900

``python -m experiments.reproduce river_valley`` (about 25 minutes on a
shared 2-core CPU; ``--size=smoke``: seconds) runs every method at every budget over 3
seeds with the same update (the core's ``train_step``), writes
``results/river_valley.json`` and the figures; the notebook
``analysis/notebooks/wsd_river_valley.ipynb`` reads them. Smoke variant
(seconds): ``--config=configs/river_valley.py:smoke``.
"""

import ml_collections

from configs import base
from configs import wsd


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = wsd.get_config()  # The main job's model, data and optimizer.
  # eval_batches: 16k held-out tokens: eval noise below the differences.
  c.update(
      name='river_valley', num_steps=1800, log_every=10, eval_every=50,
      eval_batches=16)
  c.model.max_len = 32
  c.data.seq_len = 32
  c.optimizer.weight_decay = 0.0
  c.schedule.update(
      name='wsd_s', warmup_steps=50, decay_fraction=0.25, decay_shape='linear',
      budgets=(600, 1200, 1800))
  c.checkpoint.every_steps = 300
  c.merge.update(interval=50, window=300, shape='1-sqrt')
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/river_valley.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks everything so the reproduction's smoke test runs in seconds."""
  base.smoke(c, num_steps=400, eval_every=25, eval_batches=4,
             checkpoint_every=100)
  c.model.update(d_model=32, num_layers=1, num_heads=2)
  c.data.update(vocab_size=32, seq_len=16, batch_size=16)
  c.model.max_len = 16
  c.optimizer.learning_rate = 0.06  # A high plateau: the decay shows in 400 steps.
  c.schedule.warmup_steps = 25
  c.schedule.budgets = (200, 400)
  c.merge.interval = 25
  c.merge.window = 100
  return c
