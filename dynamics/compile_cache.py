"""JAX's persistent compilation cache, on by default in the analysis commands.

A fresh process otherwise compiles every solver loop and product again
(most of a first `top_eigenpairs` call on a small model); with the cache a
second process loads them from disk. The cache lives in a per-user
directory (`default_dir`); ``--nocompilation_cache`` turns it off for a
command, ``DYNAMICS_COMPILATION_CACHE=off`` everywhere.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = 'DYNAMICS_COMPILATION_CACHE'


def default_dir() -> str:
  """``$DYNAMICS_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/dynamics/jax``
  (``~/.cache/dynamics/jax``): one per user.

  Example:
    >>> default_dir().endswith(os.path.join('dynamics', 'jax')) or ENV in os.environ
    True
  """
  value = os.environ.get(ENV)
  if value and value.lower() not in ('off', '0', 'false'):
    return value
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'dynamics', 'jax')


def enable(path: Optional[str] = None) -> Optional[str]:
  """Turns JAX's persistent compilation cache on, at ``path`` (None:
  `default_dir`), for every compilation (however short) of this process.

  Call it before the first compilation: JAX sets its cache up then.

  Args:
    path: the cache directory (created if missing).

  Returns:
    The directory, or None when ``$DYNAMICS_COMPILATION_CACHE`` is 'off' or
    it cannot be created (then nothing changes).
  """
  if os.environ.get(ENV, '').lower() in ('off', '0', 'false'):
    return None
  path = path or default_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path
