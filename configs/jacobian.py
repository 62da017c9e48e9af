"""The training Jacobian of a 64-64-10 MLP on scikit-learn's digits.

Command:
  python -m analysis.jacobian --config=configs/jacobian.py

The setting of Belrose & Scherlis (2024) and their released code: an MLP with
one GELU hidden layer of width 64 (4,810 parameters) trained by SGD with
momentum 0.9, learning rate 0.1 cosine-decayed to 0, batch 64, for 625 steps
(25 epochs of 1,600 training images; 197 held out).

What you should see (2 CPU cores, about 4 minutes, most of it the dense
4,810 x 4,810 Jacobian in forward mode): ``runs/jacobian/jacobian/
{spectrum.json, spectrum.png}`` with singular values from ~1e-9 to ~20, about
36% of them within 1e-2 of 1 (the bulk; about 3% with
``--config.data.white_noise=True``; published re-runs: ~38% and ~3%), and how
much of the top Hessian eigenvectors at the end of training lies in the bulk
(little). ``python -m experiments.reproduce training_jacobian`` compares
digits with white noise over several seeds and retrains from initializations
moved along bulk, top and random directions (``results/training_jacobian.json``).

Smoke variant (seconds, for tests): ``--config=configs/jacobian.py:smoke``
(hidden width 8, 20 steps).
"""

import ml_collections

from configs import base


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(name='jacobian', num_steps=625, log_every=25, eval_every=125)
  c.model.update(
      name='mlp', hidden_sizes=(64,), activation='gelu', norm='none')
  c.data.update(name='digits', batch_size=64, num_eval=197)
  c.optimizer.name = 'momentum'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.schedule.update(name='cosine', warmup_steps=0, final_value=0.0)
  return base.apply_variants(c, arg, {'smoke': smoke}, 'configs/jacobian.py')


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks the run so the real code path runs in seconds."""
  base.smoke(c, num_steps=20, eval_every=10)
  c.model.hidden_sizes = (8,)
  c.data.batch_size = 16
  return c
