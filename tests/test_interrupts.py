"""dynamics.interrupts: a Ctrl-C that lands while the garbage collector runs
(in a gc callback or a finalizer: JAX registers one, and Python would print
"Exception ignored in ..." and drop the exception) is remembered, not raised
there; the loop's `check` raises it at the next step."""

import gc
import signal

import pytest

from dynamics import interrupts


@pytest.fixture
def handlers():
  saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  yield
  signal.signal(signal.SIGINT, saved[0])
  signal.signal(signal.SIGTERM, saved[1])
  for cb in (interrupts._gc_start, interrupts._gc_stop):  # pylint: disable=protected-access
    while cb in gc.callbacks:
      gc.callbacks.remove(cb)
  interrupts.raise_keyboard_interrupt(False)
  interrupts.interrupted = False


def test_a_ctrl_c_during_a_collection_is_remembered_not_dropped(handlers):
  del handlers
  interrupts.install()
  interrupts.raise_keyboard_interrupt(True)
  raised = []

  def during_collection(phase, info):  # A gc callback, like JAX's.
    del info
    if phase == 'start':
      try:
        interrupts._on_sigint(signal.SIGINT, None)  # pylint: disable=protected-access
      except KeyboardInterrupt:
        raised.append(True)

  gc.callbacks.insert(1, during_collection)  # After _gc_start.
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(during_collection)
  assert not raised  # Not raised where Python would drop it ...
  assert interrupts.interrupted  # ... but remembered,
  with pytest.raises(KeyboardInterrupt):
    interrupts.check()  # and raised by the loop's next check.
  assert not interrupts._collecting  # pylint: disable=protected-access


def test_outside_a_collection_a_ctrl_c_raises_at_once(handlers):
  del handlers
  interrupts.install()
  interrupts.raise_keyboard_interrupt(True)
  with pytest.raises(KeyboardInterrupt):
    interrupts._on_sigint(signal.SIGINT, None)  # pylint: disable=protected-access
  assert interrupts.interrupted
