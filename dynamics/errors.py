"""`ConfigError` and the small checks every component's ``check(config)`` uses.

Each package checks its own config section (``models.check``, ``data.check``,
``optim.check``, ...) and raises `ConfigError` naming the field; it lives here,
JAX-free and below every package, so that none of them imports the validator
(``dynamics.config_lib.ConfigError`` is this same class). A message reads
``config.<field>=<value>: <requirement>``, one line.
"""

import math
from typing import Any, Iterable, Optional


class ConfigError(ValueError):
  """A config field has an unknown name or an invalid value."""


def require(ok: bool, field: str, value: Any, requirement: str) -> None:
  """Raises ``ConfigError('config.<field>=<value!r>: <requirement>')``
  unless ``ok``."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r}: {requirement}')


def one_of(field: str, value: Any, allowed: Iterable[Any]) -> None:
  """``value`` is one of ``allowed`` (e.g. the keys of a builder dict)."""
  allowed = tuple(allowed)
  require(value in allowed, field, value, f'must be one of {allowed}')


def is_int(x: Any) -> bool:
  """An integer, not a bool."""
  return isinstance(x, int) and not isinstance(x, bool)


def integer(field: str, value: Any, minimum: int, *,
            optional: bool = False) -> None:
  """``value`` is an integer >= ``minimum`` (or None when ``optional``)."""
  if optional and value is None:
    return
  bound = '> 0' if minimum == 1 else f'>= {minimum}'
  require(is_int(value) and value >= minimum, field, value,
          f'must be an integer {bound}' + (' or None' if optional else ''))


def _interval(above, at_least, below, at_most) -> str:
  low = ('(', above) if above is not None else ('[', at_least)
  high = (')', below) if below is not None else (']', at_most)
  if low[1] is not None and high[1] is not None:
    return f'in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}'
  if low[1] is not None:
    return f'{">" if above is not None else ">="} {low[1]:g}'
  if high[1] is not None:
    return f'{"<" if below is not None else "<="} {high[1]:g}'
  return ''


def number(field: str, value: Any, *, above: Optional[float] = None,
           at_least: Optional[float] = None, below: Optional[float] = None,
           at_most: Optional[float] = None, optional: bool = False) -> None:
  """``value`` is a finite real number in the given bounds (or None when
  ``optional``): ``number('optimizer.adam.b1', b1, at_least=0, below=1)``.

  Infinity and NaN fail even where the bounds alone would hold
  (``learning_rate=inf`` is not "> 0"): they only stop later, as a NaN loss.
  """
  if optional and value is None:
    return
  bounds = _interval(above, at_least, below, at_most)
  none = ' or None' if optional else ''
  finite = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
  require(finite, field, value, f'must be a finite number {bounds}'.rstrip()
          + none)
  ok = ((above is None or value > above) and
        (at_least is None or value >= at_least) and
        (below is None or value < below) and
        (at_most is None or value <= at_most))
  require(ok, field, value, f'must be {bounds}{none}')


def boolean(field: str, value: Any) -> None:
  """``value`` is True or False."""
  require(isinstance(value, bool), field, value, 'must be True or False')


__all__ = ['ConfigError', 'boolean', 'integer', 'is_int', 'number', 'one_of',
           'require']
