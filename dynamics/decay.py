"""Decay shapes: the multiplier ``f(p)``, from 1 at progress ``p = 0`` to 0 at
``p = 1``, of a learning-rate decay (`dynamics.schedules`) and of the decay a
checkpoint merge emulates (`dynamics.merging`).

One formula per shape, for NumPy and ``jax.numpy`` alike (``xp``). This module
imports only NumPy, so commands can offer the names before JAX starts.
"""

from typing import Any, Callable, Dict

import numpy as np

# ``config.schedule.decay_shape``: ``(p, xp) -> f(p)`` for ``p`` in [0, 1].
DECAY_SHAPES: Dict[str, Callable[[Any, Any], Any]] = {
    'linear': lambda p, xp: 1.0 - p,
    'cosine': lambda p, xp: 0.5 * (1.0 + xp.cos(xp.pi * p)),
    '1-sqrt': lambda p, xp: 1.0 - xp.sqrt(p),
}
# ``config.merge.shape``: the decay shapes, and 'uniform' (plain averaging),
# which is the linear emulation (`dynamics.merging`).
MERGE_SHAPES: Dict[str, Callable[[Any, Any], Any]] = {
    'uniform': DECAY_SHAPES['linear'], **DECAY_SHAPES}


def decay_multiplier(progress: Any, shape: str, xp: Any = np,
                     shapes: Dict[str, Callable[[Any, Any], Any]] = DECAY_SHAPES
                     ) -> Any:
  """Multiplier in [0, 1] of a decay of ``shape`` at ``progress`` (clipped to
  [0, 1]), computed with ``xp`` (``numpy`` or ``jax.numpy``).

  Example:
    >>> [float(decay_multiplier(p, '1-sqrt')) for p in (0.0, 0.25, 2.0)]
    [1.0, 0.5, 0.0]
  """
  if shape not in shapes:
    raise ValueError(f'decay shape must be one of {tuple(shapes)}, '
                     f'got {shape!r}')
  return shapes[shape](xp.clip(progress, 0.0, 1.0), xp)
