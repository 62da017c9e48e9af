"""Lazy vs rich training: an MLP whose output is scaled by alpha.

Command:
  python -m experiments.main --config=configs/lazy_rich.py:alpha=10
  python -m analysis.ntk --workdir=runs/lazy_rich_alpha10 --steps=0,500,2000

What you should see (2 CPU cores, about a minute per run): a one-hidden-layer
ReLU MLP (width 512) regressing a random teacher MLP, trained by SGD with the
learning rate scaled by 1/alpha^2 (Chizat, Oyallon & Bach's lazy-training
scaling: for SGD the same as scaling the loss by 1/alpha^2). Every 100 steps
metrics.jsonl logs the NTK probe (``ntk_distance_init``, ``ntk_alignment``,
``ntk_top_eig``, ...): with alpha=10 the kernel barely moves (distance from
init ~1e-3) and its label alignment stays flat; with ``:alpha=0.1`` it moves
(distance ~0.1 or more) and the alignment rises. The ``analysis.ntk`` command
then writes runs/.../ntk/{ntk.json, ntk.png}.

This config uses the core's plain output scaling ``f = alpha * g(x; theta)``.
The centered convention (``alpha * (g(x; theta) - g(x; theta_0))``, so that the
initial output is zero for every alpha) and the width sweep under the standard
and NTK parametrizations are in analysis/notebooks/lazy_vs_rich.ipynb, which
implements them in its own few-line training loop.

Variants: ``:alpha=A`` (any float), ``:smoke`` (seconds, for tests), or both
(``:alpha=10,smoke``).
"""

import ml_collections

from configs import base

BASE_LEARNING_RATE = 0.05   # Learning rate at alpha = 1; scaled by 1 / alpha^2.


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.num_steps = 2000
  c.log_every = 50
  c.eval_every = 500
  c.model.name = 'mlp'
  c.model.hidden_sizes = (512,)
  c.model.activation = 'relu'
  c.model.norm = 'none'
  c.data.name = 'teacher_student'
  c.data.input_dim = 16
  c.data.teacher_width = 32
  c.data.output_dim = 1
  c.data.num_train = 1024
  c.data.batch_size = 64
  c.loss.name = 'mse'
  c.optimizer.name = 'sgd'
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_steps = (500, 1000, 2000)
  c.analysis.ntk_every = 100
  c.analysis.ntk_num_examples = 64
  alpha(c, '1')
  return base.apply_variants(c, arg, {'alpha': alpha, 'smoke': smoke},
                             'configs/lazy_rich.py')


def alpha(c: ml_collections.ConfigDict, value: str) -> None:
  """Output scale ``alpha``; the learning rate scales by ``1 / alpha^2``."""
  a = float(value)
  c.name = f'lazy_rich_alpha{a:g}'
  c.model.output_scale = a
  c.optimizer.learning_rate = BASE_LEARNING_RATE / a ** 2


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks the run so the real code path runs in seconds."""
  c.num_steps = 20
  c.log_every = 5
  c.eval_every = 10
  c.model.hidden_sizes = (32,)
  c.data.num_train = 128
  c.data.batch_size = 16
  c.checkpoint.every_steps = 10
  c.checkpoint.keep_steps = (10, 20)
  c.checkpoint.async_save = False
  c.analysis.ntk_every = 10
  c.analysis.ntk_num_examples = 16
  return c
