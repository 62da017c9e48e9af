"""The main job: a small GPT-style language model trained with a WSD schedule.

Command:
  python -m experiments.main --config=configs/wsd.py

What you should see (2 CPU cores, about 2-3 minutes): a progress bar with
loss, learning rate and tokens/s. A 2-layer, 64-wide decoder-only transformer
(108k parameters) learns the embedded synthetic Markov language (vocabulary
64, no download); the first line prints its entropy rate, 2.675 nats, the
best loss any model can reach. The eval loss falls from log(64) = 4.16 to
about 2.76 during the first 400 steps, then creeps along a plateau near 2.73
during the stable phase at peak learning rate (gradient noise keeps it up),
then drops sharply to about 2.69 during the final 20% linear decay -- the
WSD signature. The summary names the workdir (``runs/wsd``), the final
train/eval loss, and where ``metrics.jsonl`` and the checkpoints are.

Smoke variant (seconds, for tests): ``--config=configs/wsd.py:smoke``.
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(
      name='wsd', num_steps=2000, log_every=20, eval_every=100, eval_batches=8)
  c.model.update(
      name='transformer', d_model=64, num_layers=2, num_heads=4, max_len=64)
  c.data.update(
      name='markov', vocab_size=64, temperature=0.5, seq_len=64, batch_size=32)
  c.optimizer.update(
      name='adamw', learning_rate=1e-2, weight_decay=0.1, clip_norm=1.0)
  c.schedule.update(
      name='wsd', warmup_steps=100, decay_fraction=0.2, decay_shape='linear')
  c.checkpoint.every_steps = 250
  return base.apply_variants(c, arg, {'smoke': _smoke_run}, 'configs/wsd.py')


def _smoke_run(c: ml_collections.ConfigDict) -> None:
  smoke(c)
  c.optimizer.learning_rate = 3e-3  # 40 steps of a tiny model: gentler.


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so the real code path runs in seconds."""
  base.smoke(c, num_steps=40, log_every=5, eval_every=20, eval_batches=2,
             checkpoint_every=10)
  c.model.update(d_model=32, num_layers=2, num_heads=2, max_len=32)
  c.data.update(vocab_size=32, seq_len=16, batch_size=8)
  c.schedule.warmup_steps = 5
  return c
