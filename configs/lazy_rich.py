"""Lazy vs rich training: an MLP whose output is scaled by alpha.

Command:
  python -m experiments.main --config=configs/lazy_rich.py:alpha=10
  python -m analysis.ntk --workdir=runs/lazy_rich_alpha10 --steps=0,500,2000

What you should see (2 CPU cores, under a minute per run): a one-hidden-layer
ReLU MLP (width 512) regressing a random teacher MLP (eval loss from 0.24 to
about 0.02), trained by SGD with the learning rate scaled by 1/alpha^2
(Chizat, Oyallon & Bach's lazy-training scaling: for SGD the same as scaling
the loss by 1/alpha^2). The MLP starts from their symmetrized initialization
(``model.antisymmetric_init``: paired hidden units with opposite readouts), so
its output is 0 at init and ``alpha * g(x; theta)`` is their centered model
``alpha * (g(x; theta) - g(x; theta_0))`` for every alpha. Every 100 steps
metrics.jsonl logs the NTK probe (``ntk_distance_init``, ``ntk_alignment``,
...): with alpha=10 the kernel barely moves (distance from init ~1e-9) and its
label alignment stays flat; with ``:alpha=0.1`` it moves (distance ~1e-2) and
the alignment rises. ``analysis.ntk`` then writes runs/.../ntk/{ntk.json,
ntk.png}.

``python -m experiments.reproduce lazy_vs_rich`` sweeps alpha and the width
(standard and NTK parametrizations) over 3 seeds with these variants.

Variants, comma-separated: ``:alpha=A`` (any float > 0), ``:width=W`` (even;
under the standard parametrization the rate scales by 512 / W, since the
kernel grows like the width), ``:ntk`` (the NTK parametrization, whose kernel
does not grow with the width: one rate, ``NTK_LEARNING_RATE / alpha^2``, for
every width), ``:smoke`` (seconds, for tests); e.g. ``:alpha=10,width=64,ntk``.
"""

import ml_collections

from configs import base

BASE_LEARNING_RATE = 0.01   # Standard parametrization, width 512, alpha = 1.
BASE_WIDTH = 512
NTK_LEARNING_RATE = 1.0     # NTK parametrization, any width, alpha = 1.


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.update(num_steps=2000, log_every=50, eval_every=500)
  c.model.update(
      name='mlp', hidden_sizes=(BASE_WIDTH,), activation='relu', norm='none',
      antisymmetric_init=True)
  c.data.update(
      name='teacher_student', input_dim=16, teacher_width=32, output_dim=1,
      num_train=1024, batch_size=64)
  c.loss.name = 'mse'
  c.optimizer.name = 'sgd'
  c.optimizer.weight_decay = 0.0
  c.schedule.name = 'constant'
  c.schedule.warmup_steps = 0
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_steps = (500, 1000, 2000)
  c.analysis.ntk_every = 100
  c.analysis.ntk_num_examples = 64
  base.apply_variants(c, arg, {'alpha': alpha, 'width': width, 'ntk': ntk,
                               'smoke': smoke}, 'configs/lazy_rich.py')
  a, w = c.model.output_scale, c.model.hidden_sizes[-1]
  c.name = (f'lazy_rich_alpha{a:g}' + ('' if w == BASE_WIDTH else f'_width{w}')
            + ('_ntk' if c.model.parametrization == 'ntk' else ''))
  c.optimizer.learning_rate = learning_rate(a, w, c.model.parametrization)
  return c


def learning_rate(alpha_value: float, width_value: int,
                  parametrization: str) -> float:
  """The SGD rate of output scale ``alpha`` at a width, in a parametrization."""
  if parametrization == 'ntk':
    return NTK_LEARNING_RATE / alpha_value ** 2
  return BASE_LEARNING_RATE * BASE_WIDTH / width_value / alpha_value ** 2


def alpha(c: ml_collections.ConfigDict, value: str) -> None:
  """Output scale ``alpha`` (the learning rate follows in `get_config`)."""
  c.model.output_scale = float(value)


def width(c: ml_collections.ConfigDict, value: str) -> None:
  """Hidden width (the learning rate follows in `get_config`)."""
  c.model.hidden_sizes = (int(value),)


def ntk(c: ml_collections.ConfigDict) -> None:
  """The NTK parametrization (N(0, 1) weights, 1/sqrt(fan-in) in the forward)."""
  c.model.parametrization = 'ntk'


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks the run so the real code path runs in seconds."""
  base.smoke(c, num_steps=40, log_every=10, eval_every=20,
             checkpoint_every=20)
  c.model.hidden_sizes = (32,)
  c.data.num_train = 128
  c.data.batch_size = 16
  c.checkpoint.keep_steps = ()
  c.checkpoint.async_save = False
  c.analysis.ntk_every = 20
  c.analysis.ntk_num_examples = 16
