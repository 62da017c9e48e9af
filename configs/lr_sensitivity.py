"""Learning-rate sensitivity with and without qk-norm and z-loss.

Small-scale proxies for large-scale instabilities (Wortsman et al., 2023):
sweep the learning rate over three orders of magnitude and watch where the
final loss blows up; attention-logit growth (fixed by ``model.qk_norm``) and
output-logit divergence (fixed by ``loss.z_loss``) show up in the per-layer
probes logged with ``log_per_layer=True`` (``layers/attn_logit_max/block_i``,
``output_log_z``, ``layers/resid_var/block_i``, effective learning rates).

Command (28 runs: 7 learning rates x qk-norm x z-loss):
  python -m experiments.sweep --config=configs/lr_sensitivity.py \\
      --sweep='optimizer.learning_rate=1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1' \\
      --sweep='model.qk_norm=False,True' --sweep='loss.z_loss=0.0,1e-4'

One point: ``python -m experiments.main --config=configs/lr_sensitivity.py``.
What you should see: ``runs/sweeps/lr_sensitivity/summary.csv`` with the
final train/eval loss of every point (divergent points are kept: the config
does not stop on NaN). Expected, following Wortsman et al. (the full grid
has not been run on the 2-core CPU yet): low learning rates end high (too
slow), the baseline's loss degrades first at the high end, and qk-norm plus
z-loss widen the range of good learning rates. The notebook
``analysis/notebooks/lr_sensitivity.ipynb`` runs a reduced version of this
grid and plots final loss vs learning rate.

Smoke variant (seconds, for tests): ``--config=configs/lr_sensitivity.py:smoke``.
"""

import ml_collections

from configs import base
from configs import wsd


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = wsd.get_config()
  c.name = 'lr_sensitivity'
  c.num_steps = 600
  c.eval_every = 100
  c.log_every = 20
  c.log_per_layer = True
  c.stop_on_nonfinite = False
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.optimizer.clip_norm = None      # No clipping: instabilities stay visible.
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 50
  c.checkpoint.every_steps = 600
  return base.apply_variants(c, arg, {'smoke': wsd.smoke},
                             'configs/lr_sensitivity.py')
