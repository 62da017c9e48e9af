"""SAM on a BatchNorm CNN: sharpness-aware gradients fed to SGD with momentum.

Command:
  python -m experiments.main --config=configs/sam.py

What you should see (2-core CPU, about 40 s; each step costs two
forward-backward passes): a conv net with BatchNorm learns scikit-learn's 8x8
digits (no download). Eval loss falls from ~2.31 to ~0.07 and eval accuracy
reaches ~98% (train loss ~0.025). ``--config.optimizer.sam.rho=0.0`` gives
plain momentum's gradients (at SAM's cost) for comparison. BatchNorm running
statistics are updated once per step, from the unperturbed pass. Variants
by flag: ASAM ``--config.optimizer.sam.adaptive=True
--config.optimizer.sam.rho=0.5`` (eta 0.01 and kernels/scales only, as the
official ASAM code); unnormalized SAM ``--config.optimizer.sam.normalize=False``; SAM-ON
(perturb only normalization parameters) ``--config.optimizer.sam.mask=norm``;
m-sharpness ``--config.optimizer.sam.num_microbatches=4``. Results go to
``runs/sam``.

Smoke variant (seconds, for tests): ``--config=configs/sam.py:smoke``.
"""

import ml_collections

from configs import adamp
from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  # The model, data, schedule and run length of configs/adamp.py (its smoke
  # variant included); the optimizer block starts again from the base's.
  c = adamp.get_config()
  c.name = 'sam'
  c.optimizer = base.get_config().optimizer
  c.optimizer.name = 'momentum'
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum.momentum = 0.9
  c.optimizer.sam.rho = 0.05
  c.optimizer.sam.mask = 'all'
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/sam.py')


def smoke(c: ml_collections.ConfigDict) -> None:
  adamp.smoke(c)
  c.optimizer.sam.num_microbatches = 2  # exercises m-sharpness too
