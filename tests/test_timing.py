"""dynamics.timing: waits for results, leaves the warm-up out."""

import time

import jax.numpy as jnp
import pytest

from dynamics import timing


class Slow:
  """A call that takes ``seconds`` when its result is waited for."""

  def __init__(self, seconds):
    self.seconds, self.calls = seconds, 0

  def __call__(self, *args):
    self.calls += 1
    time.sleep(self.seconds)
    return jnp.zeros(2)


def test_call_seconds_times_each_call_after_the_warm_up():
  fn = Slow(0.02)
  times = timing.call_seconds(fn, repeats=3, warmup=2)
  assert fn.calls == 5 and len(times) == 3
  assert all(t >= 0.02 for t in times)
  fn = Slow(0.01)
  assert timing.seconds_per_call(fn, 1, repeats=4) == pytest.approx(0.01, abs=0.05)
  assert fn.calls == 5


def test_pipelined_seconds_is_per_call():
  fn = Slow(0.01)
  seconds = timing.pipelined_seconds(fn, calls=4, warmup=1)
  assert fn.calls == 5
  assert 0.01 <= seconds < 0.05
