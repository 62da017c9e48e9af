"""Grokking on modular addition: train accuracy hits 100% long before test accuracy.

Command (the reproduction: weight decay, none, StableMax and ⊥Grad, three
seeds each; under 2 minutes on 2 CPU cores):
  python -m experiments.reproduce grokking

One run: ``python -m experiments.main --config=configs/grokking.py``.

A one-hidden-layer ReLU MLP (256 wide, init_scale 2) on the concatenated
one-hot codes of ``(a, b)``, labels ``(a + b) mod 31``, half of the 961
pairs for training, full-batch AdamW with weight decay 1. What you should
see: train accuracy reaches 1.00 within the first hundred steps while eval
accuracy stays near 0; eval accuracy then climbs over the next thousand or
two steps to ~1.0 -- the grokking delay, closed by weight decay shrinking
the memorizing solution. The reproduction writes ``results/grokking.json``
(steps to 50% and 90% test accuracy per variant, mean ± std over seeds) and
``docs/figures/grokking.png``; the README's row prints them.

Variants (Prieto et al., "Grokking at the Edge of Numerical Stability", 2025),
all without weight decay, which the paper shows is not needed once Softmax
Collapse is avoided:
  ``:nowd``       no weight decay (the paper: no grokking).
  ``:stablemax``  StableMax instead of softmax (``model.softmax``).
  ``:orthograd``  the ⊥Grad update (``optimizer.orthograd``).
  (⊥Grad *with* weight decay 1 did not even fit the training set when
  tried once, outside the reproduction: the decay pulls along the weights,
  the only direction ⊥Grad removes.)
  ``:smoke``      a few steps, for tests; ``:smoke_sweep`` the
                  reproduction's smoke size.
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(
      name='grokking', num_steps=3000, log_every=50, eval_every=250,
      eval_batches=1)
  c.model.update(
      name='mlp', hidden_sizes=(256,), activation='relu', norm='none',
      init_scale=2.0)
  # batch_size: >= 480 training pairs: full batch.
  c.data.update(
      name='modular', modulus=31, operation='add', train_fraction=0.5,
      batch_size=1024)
  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-2
  c.optimizer.adamw.b2 = 0.99
  c.optimizer.weight_decay = 1.0
  c.optimizer.weight_decay_mask = 'all'
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 10
  c.checkpoint.every_steps = 1000
  return base.apply_variants(
      c, arg, {'nowd': nowd, 'stablemax': stablemax, 'orthograd': orthograd,
               'smoke': smoke, 'smoke_sweep': smoke_sweep},
      'configs/grokking.py')


def nowd(c: ml_collections.ConfigDict) -> None:
  """No weight decay: the delayed generalization of the original paper."""
  c.name, c.optimizer.weight_decay = 'grokking_nowd', 0.0


def stablemax(c: ml_collections.ConfigDict) -> None:
  """StableMax instead of the softmax, no weight decay."""
  c.name, c.optimizer.weight_decay = 'grokking_stablemax', 0.0
  c.model.softmax = 'stablemax'


def orthograd(c: ml_collections.ConfigDict) -> None:
  """The perpendicular-gradient update, no weight decay."""
  c.name, c.optimizer.weight_decay = 'grokking_orthograd', 0.0
  c.optimizer.orthograd = True


def smoke(c: ml_collections.ConfigDict) -> None:
  base.smoke(c, num_steps=20, log_every=5, eval_every=10, checkpoint_every=10)


def smoke_sweep(c: ml_collections.ConfigDict) -> None:
  """The reproduction's smoke size: long enough to memorize (weight decay)
  and to start generalizing (⊥Grad), not to grok."""
  c.num_steps = 600
  c.progress = False
