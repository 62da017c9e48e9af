"""Stable-SPAM vs Adam in simulated 4-bit training of the small language model.

Command (Stable-SPAM, then the Adam baseline):
  python -m experiments.main --config=configs/stable_spam_4bit.py
  python -m experiments.main --config=configs/stable_spam_4bit.py:adam

or both, INT4 and FP4, through the sweep runner:
  python -m experiments.sweep --config=configs/stable_spam_4bit.py \\
      --sweep='optimizer.name=adam,stable_spam' \\
      --sweep='model.quantization=int4,fp4'

The model is ``configs/stable_spam.py``'s 2-layer, 64-wide GPT on the
embedded Markov language, with every linear layer fake-quantized
(``model.quantization``: weights and activations in blocks of 16, straight-
through gradients; ``dynamics/quantization.py``). Stable-SPAM's claim
(Huang et al., 2025) is that under 4-bit training it is more stable than Adam
(fewer and smaller loss / gradient-norm spikes) and reaches Adam's final loss
in about half the steps; ``analysis/notebooks/optimizers_4bit.ipynb`` plots
both runs' loss and gradient norm and counts spikes. No gradient clipping, so
the optimizers' own spike handling is what is compared.

What you should see (2 CPU cores, ~2 minutes per run): measured at full size,
both optimizers train stably in INT4 and FP4 (no loss spikes, 4-7 gradient-
norm spikes each) to the same final eval loss (2.712-2.713, floor 2.675), and
Stable-SPAM reaches Adam's final loss at the same step, not in half the steps:
this small proxy does not reproduce the paper's claim (made at 60M-1B).

Smoke variant (seconds, for tests): ``:smoke`` (``:adam,smoke`` for Adam).
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
      c, arg, {'adam': adam, 'fp4': fp4, 'smoke': stable_spam.smoke},
      'configs/stable_spam_4bit.py')


def adam(c: ml_collections.ConfigDict) -> None:
  """The baseline: AdamW with the same quantization."""
  c.name = 'stable_spam_4bit_adam'
  c.optimizer.name = 'adamw'
  c.optimizer.b2 = 0.999


def fp4(c: ml_collections.ConfigDict) -> None:
  """FP4 (NVFP4-style) instead of INT4."""
  c.model.quantization = 'fp4'
  c.name += '_fp4'
