"""Learning-rate sensitivity with and without qk-norm and z-loss.

Command (the reproduction: a factor-2 grid of peak learning rates, the
baseline and qk-norm + z-loss, three seeds; about 15 minutes on 2 CPU cores):
  python -m experiments.reproduce lr_sensitivity

Small-scale proxies for large-scale instabilities (Wortsman et al., 2023):
sweep the learning rate over orders of magnitude and watch where the final
loss blows up; attention-logit growth (fixed by ``model.qk_norm``) and
output-logit divergence (fixed by ``loss.z_loss``) show up in the per-layer
probes logged with ``log_per_layer=True`` (``layers/attn_logit_max/block_i``,
``output_log_z``, ``layers/resid_var/block_i``, effective learning rates).

One point (600 steps, probes logged): ``python -m experiments.main
--config=configs/lr_sensitivity.py``; a grid through the sweep runner:
  python -m experiments.sweep --config=configs/lr_sensitivity.py \\
      --sweep='optimizer.learning_rate=1e-3,4e-3,1.6e-2,6.4e-2,2.56e-1' \\
      --sweep='model.qk_norm=False,True' --sweep='loss.z_loss=0.0,1e-4'

What you should see: low learning rates end high (too slow), the baseline's
loss degrades at the high end while its largest attention logit grows by
orders of magnitude, and qk-norm plus z-loss keep the logits small and the
loss lower there. The reproduction (``:sweep``: 200 steps at batch 16 per
point) writes ``results/lr_sensitivity.json`` and
``docs/figures/lr_sensitivity.png``; the README's row and
``analysis/notebooks/lr_sensitivity.ipynb`` print the numbers.

Variants: ``:sweep`` (one point of the reproduction), ``:smoke`` (seconds,
for tests), ``:smoke_sweep`` (the reproduction's smoke size).
"""

import ml_collections

from configs import base
from configs import wsd


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = wsd.get_config()
  c.update(
      name='lr_sensitivity', num_steps=600, eval_every=100, log_every=20,
      log_per_layer=True, stop_on_nonfinite=False)
  c.model.update(d_model=64, num_layers=2, num_heads=4)
  c.optimizer.clip_norm = None      # No clipping: instabilities stay visible.
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 50
  c.checkpoint.every_steps = 600
  return base.apply_variants(
      c, arg, {'smoke': wsd.smoke, 'sweep': sweep, 'smoke_sweep': smoke_sweep},
      'configs/lr_sensitivity.py')


def sweep(c: ml_collections.ConfigDict) -> None:
  """One point of the reproduction's sweep: short runs; the probes are
  measured once, on the final parameters, by the reproduction."""
  c.num_steps = 200
  c.schedule.warmup_steps = 20
  c.data.batch_size = 16
  c.eval_batches = 4
  c.log_per_layer = False


def smoke_sweep(c: ml_collections.ConfigDict) -> None:
  """The sweep at smoke size (seconds): one block, enough steps to learn."""
  wsd.smoke(c)
  c.num_steps = 100
  c.model.num_layers = 1
  c.log_per_layer = False
