"""muP's coordinate check: an MLP whose width grows, Adam, teacher-student data.

Command (the whole check: muP and the standard parametrization, widths 64
to 4096, three seeds; about 3 minutes on 2 CPU cores):
  python -m experiments.reproduce mup_coordinate_check

One run: ``python -m experiments.main --config=configs/mup.py:width=1024``
(``:standard,width=1024`` for the standard parametrization).

What you should see (the reproduction prints and plots it): after a few Adam
steps, the change of every layer's output on a fixed batch -- input layer,
hidden layer, readout -- is the same size at every width under muP (slopes of
log size vs log width within +-0.1), while under the standard
parametrization the hidden layer's and the readout's grow about linearly
with width (Yang et al., "Tensor Programs V", 2021, Fig. 5 / App. D.1). muP
uses ``base_width = 64``: at width 64 it is the standard parametrization
with a zero-initialized readout.

Smoke variant (seconds, for tests): ``--config=configs/mup.py:smoke``.
"""

import ml_collections

from configs import base

BASE_WIDTH = 64


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  # num_steps: The check looks at the first few updates.
  c.update(name='mup', num_steps=4, log_every=1, eval_every=4, eval_batches=1)
  c.model.update(
      name='mlp', hidden_sizes=(BASE_WIDTH, BASE_WIDTH), activation='relu',
      norm='none', parametrization='mup', base_width=BASE_WIDTH)
  c.data.update(
      name='teacher_student', input_dim=16, output_dim=4, batch_size=32)
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  c.checkpoint.every_steps = 4
  return base.apply_variants(
      c, arg, {'standard': standard, 'width': width, 'smoke': smoke},
      'configs/mup.py')


def standard(c: ml_collections.ConfigDict) -> None:
  """The standard parametrization: LeCun init everywhere, one global LR."""
  c.name = 'mup_standard'
  c.model.parametrization = 'standard'
  c.model.base_width = None


def width(c: ml_collections.ConfigDict, value: str) -> None:
  """Both hidden layers ``value`` wide."""
  c.model.hidden_sizes = (int(value), int(value))


def smoke(c: ml_collections.ConfigDict) -> None:
  base.smoke(c, num_steps=3, eval_every=3, checkpoint_every=3)
