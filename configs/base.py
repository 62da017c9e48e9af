"""The starting point of every experiment config.

Experiment configs call :func:`get_config` (every field with its default,
locked: declared once, in ``dynamics/config_schema.py``) and change only what
differs; ``--config=FILE:VARIANT`` variants go through :func:`apply_variants`,
and each ``smoke`` variant extends :func:`smoke`.
"""

from typing import Callable, Mapping, Optional

import ml_collections

from dynamics import config_schema

Variant = Callable[..., None]


def apply_variants(c: ml_collections.ConfigDict, arg: Optional[str],
                   variants: Mapping[str, Variant], where: str
                   ) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants of ``--config=FILE:ARG``.

  Each part of ``arg`` is ``name`` or ``name=value``; ``variants[name]`` is
  called as ``fn(c)`` or ``fn(c, value)``, in the order given.

  Raises:
    ConfigError: an unknown variant, naming ``where`` and the known ones.
  """
  for part in filter(None, (arg or '').split(',')):
    name, _, value = part.partition('=')
    if name not in variants:
      raise config_schema.ConfigError(f'{where}: unknown variant {name!r} (use '
                       f'{" | ".join(variants)}, comma-separated)')
    if value:
      variants[name](c, value)
    else:
      variants[name](c)
  return c


def get_config() -> ml_collections.ConfigDict:
  """Every field with its default, locked (`dynamics.config_schema`)."""
  return config_schema.defaults()


def smoke(c: ml_collections.ConfigDict, *, num_steps: int,
          log_every: Optional[int] = None, eval_every: Optional[int] = None,
          eval_batches: Optional[int] = None,
          checkpoint_every: Optional[int] = None
          ) -> ml_collections.ConfigDict:
  """The shrink every config's ``smoke`` variant starts from.

  The run is cut to ``num_steps``, logged, evaluated (on ``eval_batches``)
  and checkpointed within them, without a progress bar; an argument left
  None keeps the config's value. The variant then shrinks its own model and
  data, so the real code path runs in seconds.
  """
  c.num_steps = num_steps
  for field, value in (('log_every', log_every), ('eval_every', eval_every),
                       ('eval_batches', eval_batches)):
    if value is not None:
      c[field] = value
  if checkpoint_every is not None:
    c.checkpoint.every_steps = checkpoint_every
  c.progress = False
  return c
