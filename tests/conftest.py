"""Shared test settings: strict rank promotion, quiet orbax, the repo on
sys.path, and one JAX compilation cache for the whole session.

The cache (a fresh directory per test session, shared by the xdist workers
and every subprocess they start) lets the many runs of the same smoke configs
compile once; it changes no bits, only when XLA compiles.
"""

import os
import shutil
import sys
import tempfile

# xdist workers are children of the controller: one directory per session.
_WORKER = 'PYTEST_XDIST_WORKER' in os.environ
_CACHE = os.path.join(tempfile.gettempdir(), 'dynamics_tests_jax_cache_'
                      f'{os.getppid() if _WORKER else os.getpid()}')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
# The commands turn the cache on in a per-user directory (dynamics.compile_cache):
# the suite's runs of them use the suite's.
os.environ.setdefault('DYNAMICS_COMPILATION_CACHE', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
# The suite's shapes are tiny: compiling dominates, and XLA's backend
# optimizations cost more than they save. Subprocesses inherit the flag (the
# multi-device ones append their device count to it).
_FAST_COMPILE = '--xla_backend_optimization_level=0'
if _FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' ' + _FAST_COMPILE).strip()

import jax  # noqa: E402
from absl import logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
jax.config.update('jax_numpy_rank_promotion', 'raise')
logging.set_verbosity(logging.WARNING)


def pytest_unconfigure(config):
  del config
  if not _WORKER:  # The controller ends last.
    shutil.rmtree(_CACHE, ignore_errors=True)
