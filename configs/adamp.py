"""AdamP on a scale-invariant network: a BatchNorm CNN on the embedded digits.

Command:
  python -m experiments.main --config=configs/adamp.py

What you should see (2-core CPU, about 30 s): a two-layer conv net whose
conv kernels are each followed by BatchNorm (so the loss does not depend on
their norm, the case AdamP is built for) learns scikit-learn's 8x8 digits (no
download). Eval loss falls from ~2.31 (chance over 10 classes) to ~0.13 and
eval accuracy reaches ~97% (train loss ~0.07). With
``--config.optimizer.name=adamw`` the accuracy is the same but the logged
``param_norm`` ends higher (measured 14.96 vs 14.22): AdamP removes the radial
part of the conv kernels' updates, so their norms grow less. Results go to ``runs/adamp``.

Smoke variant (seconds, for tests): ``--config=configs/adamp.py:smoke``.
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(
      name='adamp', num_steps=600, log_every=20, eval_every=100,
      eval_batches=4)
  c.model.update(
      name='cnn', channels=(16, 32), norm='batchnorm', activation='relu')
  c.data.name = 'digits'
  c.data.batch_size = 64
  c.optimizer.name = 'adamp'
  c.optimizer.learning_rate = 3e-3
  c.optimizer.adamp.b2 = 0.999
  c.optimizer.weight_decay = 1e-2
  c.optimizer.adamp.delta = 0.1
  c.optimizer.adamp.wd_ratio = 0.1
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 30
  c.checkpoint.every_steps = 200
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/adamp.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks the config so the real code path runs in seconds."""
  base.smoke(c, num_steps=20, log_every=5, eval_every=10, eval_batches=1,
             checkpoint_every=10)
  c.model.channels = (4, 8)
  c.data.batch_size = 16
  c.schedule.warmup_steps = 2
  return c
