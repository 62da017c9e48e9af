"""Stable-SPAM vs Adam in simulated 4-bit training of the small language model.

Command (the reproduction: a learning-rate sweep, both optimizers, INT4 and
FP4, three seeds; about 15 minutes on 2 CPU cores):
  python -m experiments.reproduce optimizers_4bit

One run (Stable-SPAM, then the Adam baseline, 2,000 steps each):
  python -m experiments.main --config=configs/stable_spam_4bit.py
  python -m experiments.main --config=configs/stable_spam_4bit.py:adam

The model is ``configs/stable_spam.py``'s 2-layer, 64-wide GPT on the
embedded Markov language, with every linear layer fake-quantized
(``model.quantization``: weights and activations in blocks of 16, straight-
through gradients; ``dynamics/quantization.py``). Stable-SPAM's claim
(Huang et al., 2025) is that under 4-bit training it is more stable than Adam
(fewer and smaller loss spikes, training at learning rates where Adam
diverges). No gradient clipping, so the optimizers' own spike handling is what
is compared.

What you should see: one run trains to an eval loss a few hundredths of a
nat above the entropy floor printed at the start (2.675). The reproduction
(``:sweep``: 200 steps at batch 16 per point) writes
``results/optimizers_4bit.json`` and ``docs/figures/optimizers_4bit.png``:
per optimizer and format the largest stable learning rate, the loss spikes
at every rate and the final losses (mean ± std over seeds); the README's
row and ``analysis/notebooks/optimizers_4bit.ipynb`` print them.

Variants: ``:adam`` (AdamW baseline), ``:fp4`` (FP4 instead of INT4),
``:sweep`` (one point of the reproduction's sweep), ``:smoke`` (seconds, for
tests; ``:adam,smoke`` for Adam), ``:smoke_sweep`` (the sweep's smoke size).
"""

import ml_collections

from configs import base
from configs import stable_spam


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = stable_spam.get_config()
  c.name = 'stable_spam_4bit'
  c.model.quantization = 'int4'
  c.optimizer.clip_norm = None
  c.log_per_layer = False
  c.stop_on_nonfinite = False       # A diverging 4-bit Adam run is a result.
  return base.apply_variants(
      c, arg, {'adam': adam, 'fp4': fp4, 'sweep': sweep,
               'smoke': stable_spam.smoke, 'smoke_sweep': smoke_sweep},
      'configs/stable_spam_4bit.py')


def adam(c: ml_collections.ConfigDict) -> None:
  """The baseline: AdamW with the same quantization."""
  c.name = 'stable_spam_4bit_adam'
  c.optimizer.name = 'adamw'
  c.optimizer.adamw.b2 = 0.999


def fp4(c: ml_collections.ConfigDict) -> None:
  """FP4 (NVFP4-style) instead of INT4."""
  c.model.quantization = 'fp4'
  c.name += '_fp4'


def sweep(c: ml_collections.ConfigDict) -> None:
  """One point of the reproduction's learning-rate sweep: short runs."""
  c.num_steps = 200
  c.schedule.warmup_steps = 20
  c.data.batch_size = 16
  c.eval_batches = 4


def smoke_sweep(c: ml_collections.ConfigDict) -> None:
  """The sweep at smoke size (seconds): one block, long enough to get
  halfway from the initial loss to the floor."""
  stable_spam.smoke(c)
  c.num_steps = 150
  c.model.num_layers = 1
  c.schedule.warmup_steps = 5
