"""JAX's persistent compilation cache, on by default in the commands.

A fresh process otherwise compiles every solver loop and product again
(most of a first `top_eigenpairs` call on a small model); with the cache a
second process loads them from disk. The analysis commands
(``analysis.hessian``, ``.jacobian``, ``.landscape``, ``.ntk``) and
``experiments.main`` (training, with the analysis probes of its config)
turn it on (`define_flag`, `enable`). The cache lives in a per-user
directory (`default_dir`); ``--nocompilation_cache`` turns it off for a
command, ``DYNAMICS_COMPILATION_CACHE=off`` everywhere. It changes when XLA
compiles, never what a program computes.
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
  # Every compilation, however short (a first call is made of many small
  # ones), unless JAX's own variables say otherwise.
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path


def define_flag(module_name: str):
  """Defines the ``--[no]compilation_cache`` flag (on by default) of the
  command ``module_name`` (its ``__name__``: the flag is one of its own, in
  its ``--help``) and returns the holder; the command calls `enable` when
  it is on, before anything compiles."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if module_name == '__main__':  # As absl names a script's own flags.
    module_name = sys.argv[0]
  return flags.DEFINE_boolean(
      'compilation_cache', True, "JAX's persistent compilation cache (a "
      'per-user directory: dynamics.compile_cache.default_dir(), or '
      '$DYNAMICS_COMPILATION_CACHE); a second process loads what the first '
      'compiled instead of compiling it again.', module_name=module_name)
