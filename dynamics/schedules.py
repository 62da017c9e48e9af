"""Learning-rate schedules: plain ``step -> value`` functions (optax style).

Convention shared by every schedule here: optax evaluates a schedule at the
optimizer's count *before* incrementing it, so the first update uses
``schedule(0)``. Warmups therefore start at ``peak / warmup_steps`` (never at
exactly 0, which would waste the first step) and reach ``peak`` at step
``warmup_steps - 1``.
"""

from typing import Any, Callable, Dict

import jax.numpy as jnp
import optax

from dynamics import decay
from dynamics import errors

DecayShape = str  # A name of DECAY_SHAPES.
DECAY_SHAPES = decay.DECAY_SHAPES


def decay_multiplier(progress: jnp.ndarray, shape: DecayShape) -> jnp.ndarray:
  """Multiplier in [0, 1] of a decay at ``progress`` in [0, 1] (1 -> 0)."""
  return decay.decay_multiplier(progress, shape, jnp)


def _warmup(peak_value: float, warmup_steps: int) -> optax.Schedule:
  # Value peak*(s+1)/W at step s: the first update already moves.
  return optax.linear_schedule(peak_value / warmup_steps, peak_value,
                               max(warmup_steps - 1, 0))


def decay_schedule(start_value: float, decay_steps: int,
                   decay_shape: DecayShape = 'linear',
                   final_value: float = 0.0) -> optax.Schedule:
  """Decay from ``start_value`` (at its step 0) to ``final_value`` (at ``decay_steps``)."""
  decay_multiplier(jnp.zeros(()), decay_shape)  # Validates the shape early.

  def schedule(count):
    progress = jnp.asarray(count, jnp.float32) / max(decay_steps, 1)
    return final_value + (start_value - final_value) * decay_multiplier(
        progress, decay_shape)

  return schedule


def wsd(peak_value: float, total_steps: int, warmup_steps: int,
        decay_fraction: float, decay_shape: DecayShape = 'linear',
        final_value: float = 0.0) -> optax.Schedule:
  r"""Warmup-stable-decay (trapezoidal) schedule.

  With ``W = warmup_steps``, ``D = round(decay_fraction * total_steps)`` and
  ``S = total_steps - D`` the first decay step:

  .. math::
    \eta(s) = \begin{cases}
      \eta_{peak} (s + 1) / W & s < W \\
      \eta_{peak} & W \le s < S \\
      \eta_{final} + (\eta_{peak} - \eta_{final})\, f((s - S) / D) & S \le s
    \end{cases}

  with ``f(p) = 1 - p`` (linear), ``(1 + cos(pi p)) / 2`` (cosine) or
  ``1 - sqrt(p)`` (1-sqrt), and ``p`` clipped to [0, 1]: the decay starts at the
  peak and reaches ``final_value`` at step ``total_steps``.

  Args:
    peak_value: learning rate of the stable phase.
    total_steps: steps of the whole run.
    warmup_steps: linear warmup steps (0 for none).
    decay_fraction: fraction of ``total_steps`` spent decaying, in [0, 1].
    decay_shape: 'linear', 'cosine' or '1-sqrt'.
    final_value: learning rate at the end of the decay.

  Returns:
    An optax schedule ``step -> learning rate``.

  Example:
    >>> sched = wsd(1e-3, total_steps=1000, warmup_steps=100, decay_fraction=0.2)
    >>> round(float(sched(500)), 8), round(float(sched(950)), 8)
    (0.001, 0.00025)

  References:
    Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies", 2024; Hägele et al., "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations", 2024.
  """
  if not 0.0 <= decay_fraction <= 1.0:
    raise ValueError(f'decay_fraction must be in [0, 1], got {decay_fraction}')
  decay_steps = int(round(decay_fraction * total_steps))
  decay_start = total_steps - decay_steps
  if warmup_steps > decay_start:
    raise ValueError(
        f'warmup_steps={warmup_steps} runs into the decay, which starts at '
        f'step {decay_start} (total_steps={total_steps}, '
        f'decay_fraction={decay_fraction})')
  decaying = decay_schedule(peak_value, decay_steps, decay_shape, final_value)
  if warmup_steps == 0:
    return optax.join_schedules(
        [optax.constant_schedule(peak_value), decaying], [decay_start])
  return optax.join_schedules(
      [_warmup(peak_value, warmup_steps), optax.constant_schedule(peak_value),
       decaying], [warmup_steps, decay_start])


def constant(peak_value: float, warmup_steps: int = 0) -> optax.Schedule:
  """Constant learning rate, after an optional linear warmup."""
  if warmup_steps == 0:
    return optax.constant_schedule(peak_value)
  return optax.join_schedules(
      [_warmup(peak_value, warmup_steps), optax.constant_schedule(peak_value)],
      [warmup_steps])


def warmup_cosine(peak_value: float, total_steps: int, warmup_steps: int,
                  final_value: float = 0.0) -> optax.Schedule:
  """Linear warmup then cosine decay to ``final_value`` at ``total_steps``."""
  if warmup_steps > total_steps:
    raise ValueError(f'warmup_steps={warmup_steps} > total_steps={total_steps}')
  decaying = decay_schedule(peak_value, total_steps - warmup_steps, 'cosine',
                            final_value)
  if warmup_steps == 0:
    return decaying
  return optax.join_schedules([_warmup(peak_value, warmup_steps), decaying],
                              [warmup_steps])


def from_config(config) -> optax.Schedule:
  """The schedule named by ``config.schedule`` for ``config.num_steps`` steps.

  Multiplies ``config.optimizer.learning_rate``. A WSD branch
  (``config.branch.from_step``) follows the parent's stable phase up to the
  branch step, then decays over ``config.branch.decay_steps``.
  """
  sc, peak = config.schedule, config.optimizer.learning_rate
  if config.branch.from_step is not None:
    stable = constant(peak, sc.warmup_steps)
    decaying = decay_schedule(peak, config.branch.decay_steps, sc.decay_shape,
                              sc.final_value)
    return optax.join_schedules([stable, decaying], [config.branch.from_step])
  if sc.name not in SCHEDULES:
    raise ValueError(f'schedule.name must be one of {tuple(SCHEDULES)}, '
                     f'got {sc.name!r}')
  return SCHEDULES[sc.name](config, peak)


def _check_budgets(budgets) -> tuple[int, ...]:
  """Budgets as a tuple of ints, or a ValueError naming the offending value."""
  if budgets is None or len(budgets) == 0:
    raise ValueError(f'wsd_s needs at least one budget, got budgets={budgets!r}')
  checked = []
  for i, b in enumerate(budgets):
    if int(b) != b or b <= 0:
      raise ValueError(f'budgets must be positive integers, got budgets[{i}]={b!r} '
                       f'in {tuple(budgets)}')
    if checked and b <= checked[-1]:
      raise ValueError(f'budgets must be strictly increasing, got budgets[{i}]={b} '
                       f'after {checked[-1]} in {tuple(budgets)}')
    checked.append(int(b))
  return tuple(checked)


def wsd_s(peak_value: float, budgets, warmup_steps: int,
          decay_fraction: float, decay_shape: DecayShape = 'linear',
          final_value: float = 0.0) -> optax.Schedule:
  r"""WSD-S: one run that decays at every budget, then resumes the stable phase.

  With budgets :math:`b_1 < \dots < b_n` (:math:`b_0 = 0`), each budget owns a
  decay of :math:`D_i = \mathrm{round}(\text{decay\_fraction}\,(b_i - b_{i-1}))`
  steps that ends exactly at :math:`b_i`, i.e. starts at :math:`S_i = b_i - D_i`:

  .. math::
    \eta(s) = \begin{cases}
      \eta_{peak} (s + 1) / W & s < W \\
      \eta_{final} + (\eta_{peak} - \eta_{final})\, f((s - S_i) / D_i)
          & S_i \le s < b_i \\
      \eta_{final} & s \ge b_n \\
      \eta_{peak} & \text{otherwise (stable phase)}
    \end{cases}

  ``f`` is the decay shape (see :func:`wsd`). Choices, documented because the
  paper leaves them open: the decay of budget :math:`i` is a fraction of the
  stretch since the previous budget (not of :math:`b_i`), so decays do not
  overlap; the checkpoint at step :math:`b_i` (after :math:`b_i` updates) is the
  decayed model, as the last checkpoint of a :func:`wsd` run of
  ``total_steps = b_i`` is (the rate at step :math:`b_i` itself is the peak
  again, never ``final_value``); from step :math:`b_i` on the stable phase
  restarts at the peak (no re-warmup), continuing from the decayed weights;
  after the last budget the rate stays at ``final_value``.

  Args:
    peak_value: learning rate of the stable phases.
    budgets: strictly increasing positive step budgets; each ends a decay.
    warmup_steps: linear warmup steps at the start (0 for none).
    decay_fraction: fraction of each inter-budget stretch spent decaying, in
      [0, 1].
    decay_shape: 'linear', 'cosine' or '1-sqrt'.
    final_value: learning rate at the end of each decay.

  Returns:
    An optax schedule ``step -> learning rate``.

  Example:
    >>> sched = wsd_s(1.0, budgets=(100, 200), warmup_steps=0,
    ...               decay_fraction=0.2)
    >>> [float(sched(s)) for s in (79, 80, 90, 100, 179, 190, 200)]
    [1.0, 1.0, 0.5, 1.0, 1.0, 0.5, 0.0]

  References:
    Wen et al., "Understanding Warmup-Stable-Decay Learning Rates: A River
    Valley Loss Landscape Perspective", 2024.
  """
  budgets = _check_budgets(budgets)
  if not 0.0 <= decay_fraction <= 1.0:
    raise ValueError(f'decay_fraction must be in [0, 1], got {decay_fraction}')
  decay_multiplier(jnp.zeros(()), decay_shape)  # Validates the shape early.
  pieces, boundaries, previous = [], [], 0
  if warmup_steps > 0:
    pieces.append(_warmup(peak_value, warmup_steps))
    boundaries.append(warmup_steps)
  pieces.append(optax.constant_schedule(peak_value))
  for b in budgets:
    decay_steps = int(round(decay_fraction * (b - previous)))
    decay_start = b - decay_steps
    if warmup_steps > decay_start:
      raise ValueError(
          f'warmup_steps={warmup_steps} runs into the decay of budget {b}, '
          f'which starts at step {decay_start}')
    pieces += [decay_schedule(peak_value, decay_steps, decay_shape, final_value),
               optax.constant_schedule(peak_value)]
    boundaries += [decay_start, b]
    previous = b
  pieces[-1] = optax.constant_schedule(final_value)
  return optax.join_schedules(pieces, boundaries)


# ``config.schedule.name``: ``(config, peak learning rate) -> schedule``.
SCHEDULES: Dict[str, Callable[[Any, float], optax.Schedule]] = {
    'wsd': lambda c, peak: wsd(
        peak, c.num_steps, c.schedule.warmup_steps, c.schedule.decay_fraction,
        c.schedule.decay_shape, c.schedule.final_value),
    'wsd_s': lambda c, peak: wsd_s(
        peak, c.schedule.budgets, c.schedule.warmup_steps,
        c.schedule.decay_fraction, c.schedule.decay_shape,
        c.schedule.final_value),
    'constant': lambda c, peak: constant(peak, c.schedule.warmup_steps),
    'cosine': lambda c, peak: warmup_cosine(
        peak, c.num_steps, c.schedule.warmup_steps, c.schedule.final_value),
}


def check(config: Any) -> None:
  """Raises ``ConfigError`` for an invalid ``config.schedule`` field, against
  the run it schedules (``num_steps``, the peak ``optimizer.learning_rate``,
  a branch's decay)."""
  sc, steps = config.schedule, config.num_steps
  errors.one_of('schedule.name', sc.name, SCHEDULES)
  errors.one_of('schedule.decay_shape', sc.decay_shape, DECAY_SHAPES)
  errors.number('schedule.decay_fraction', sc.decay_fraction, at_least=0,
                at_most=1)
  errors.integer('schedule.warmup_steps', sc.warmup_steps, 0)
  errors.number('schedule.final_value', sc.final_value, at_least=0)
  peak = config.optimizer.learning_rate
  errors.require(sc.final_value <= peak, 'schedule.final_value',
                 sc.final_value, 'must be <= the peak optimizer.learning_rate='
                 f'{peak} (a decay ends below its start)')
  if sc.name == 'wsd' and config.branch.from_step is None:
    decay_start = steps - int(round(sc.decay_fraction * steps))
    errors.require(sc.warmup_steps <= decay_start, 'schedule.warmup_steps',
                   sc.warmup_steps, 'runs into the decay, which starts at '
                   f'step {decay_start} (num_steps={steps}, '
                   f'decay_fraction={sc.decay_fraction})')
  else:
    errors.require(sc.warmup_steps <= steps, 'schedule.warmup_steps',
                   sc.warmup_steps, f'must be <= num_steps={steps}')
  if sc.name == 'wsd_s' or sc.budgets is not None:
    budgets = sc.budgets
    ok = isinstance(budgets, (tuple, list)) and len(budgets) > 0 and all(
        errors.is_int(b) for b in budgets)
    errors.require(ok, 'schedule.budgets', budgets, 'must list the step '
                   'budgets (a tuple of integers) for schedule.name=wsd_s')
    errors.require(all(b > a for a, b in zip((0,) + tuple(budgets), budgets)),
                   'schedule.budgets', budgets,
                   'must be strictly increasing and > 0')
    errors.require(budgets[-1] <= steps, 'schedule.budgets', budgets,
                   f'must not exceed num_steps={steps}')
