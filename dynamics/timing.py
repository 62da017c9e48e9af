"""Wall time of compiled calls, the same way in every benchmark.

JAX dispatches asynchronously: a call returns before its result exists, so
every timing here waits for the result (``jax.block_until_ready``), and the
first calls (compilation, warm-up) are not timed.
"""

import statistics
import time
from typing import Any, Callable, List

import jax


def call_seconds(fn: Callable[..., Any], *args: Any, repeats: int = 5,
                 warmup: int = 1) -> List[float]:
  """Seconds of each of ``repeats`` calls ``fn(*args)``, each waited for,
  after ``warmup`` calls that are not timed.

  Example:
    >>> import jax.numpy as jnp
    >>> times = call_seconds(jax.jit(lambda x: x @ x), jnp.ones((8, 8)), repeats=3)
    >>> len(times), all(t > 0 for t in times)
    (3, True)
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def seconds_per_call(fn: Callable[..., Any], *args: Any, repeats: int = 5,
                     warmup: int = 1) -> float:
  """Median of `call_seconds`: the wall time of one compiled call."""
  return float(statistics.median(call_seconds(fn, *args, repeats=repeats,
                                              warmup=warmup)))


def pipelined_seconds(fn: Callable[[], Any], calls: int, warmup: int = 2
                      ) -> float:
  """Seconds per call of ``calls`` back-to-back calls ``fn()``, waited for
  once at the end (dispatch overlaps compute, as in a training loop), after
  ``warmup`` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(calls - 1):
    fn()
  jax.block_until_ready(fn())
  return (time.perf_counter() - start) / calls
