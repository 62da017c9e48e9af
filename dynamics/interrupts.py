"""Signals from a command's first line: SIGTERM exits 75, Ctrl-C exits 130.

`install` is the first thing a command does (before JAX is imported), so no
moment of its life is left to Python's defaults (SIGTERM's exit 143, which
job scripts do not requeue; a Ctrl-C during an import that something
swallows):

* SIGTERM before the training loop took it over (`dynamics.loop_utils.
  SigtermFlag` saves at the next step, then the command exits 75) or after
  the loop ended: nothing is due to be saved, so the process says so and
  exits 75 (`EXIT_PREEMPTED`) at once: a requeued job resumes from the
  latest checkpoint.
* Ctrl-C before the command's ``main`` runs exits 130 at once; in
  ``main`` it raises ``KeyboardInterrupt`` once (the loop's cleanup waits
  for a pending checkpoint and releases the lock) and is remembered: `interrupted`
  stays True even if some library swallowed the exception, and the command
  exits 130 (`exit_now`). A Ctrl-C that arrives while the garbage collector
  runs (in a gc callback or a finalizer, where Python would print the
  exception and drop it) is only remembered: the training loop's `check`
  raises it at the next step. A second Ctrl-C exits 130 at once.

`exit_now` flushes and leaves with ``os._exit``: the interpreter's shutdown,
with XLA's compile threads still running, is where a Ctrl-C during the
first compilation used to segfault (exit 139 instead of 130).
"""

import gc
import os
import signal
import sys
from typing import NoReturn, Optional

EXIT_PREEMPTED = 75      # SIGTERM: resume me (EX_TEMPFAIL); job scripts requeue.
EXIT_INTERRUPTED = 130   # Ctrl-C, as shells report SIGINT.

interrupted = False


def exit_now(code: int, message: Optional[str] = None) -> NoReturn:
  """Prints ``message`` (stderr), flushes both streams and exits ``code``
  without the interpreter's shutdown (no atexit, no finalizers)."""
  if message:
    print(message, file=sys.stderr)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  exit_now(EXIT_PREEMPTED, 'Preempted (SIGTERM) with nothing due to be saved; '
           're-run the same command to resume from the latest checkpoint.')


_raising = False  # Whether a Ctrl-C raises (a command's main is running).


_collecting = False  # Whether the garbage collector runs (`_gc_start`, `_gc_stop`).


def _gc_start(phase, info) -> None:
  del info
  global _collecting
  if phase == 'start':
    _collecting = True


def _gc_stop(phase, info) -> None:
  del info
  global _collecting
  if phase == 'stop':
    _collecting = False


def _on_sigint(signum, frame) -> None:
  del signum, frame
  global interrupted
  if not _raising:  # Importing, parsing flags: nothing to clean up.
    exit_now(EXIT_INTERRUPTED, '\nInterrupted (Ctrl-C).')
  if interrupted:  # The second Ctrl-C: no more waiting.
    exit_now(EXIT_INTERRUPTED, '\nInterrupted (Ctrl-C) again; exiting now.')
  interrupted = True
  if _collecting:
    # Inside a gc callback or a finalizer (JAX registers one) Python prints
    # an exception and drops it ("Exception ignored in ..."): remember it
    # instead; the loop's `check` raises it at the next step.
    return
  raise KeyboardInterrupt


def raise_keyboard_interrupt(enabled: bool = True) -> None:
  """From now on a (first) Ctrl-C raises ``KeyboardInterrupt``, for the
  caller to clean up and exit 130; before, it exits 130 at once."""
  global _raising
  _raising = enabled


def install() -> None:
  """Installs the handlers (main thread only; elsewhere a no-op)."""
  global interrupted
  interrupted = False
  try:
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)
  except ValueError:  # Not the main thread.
    return
  # First at a collection's start, last at its stop: every other callback
  # (and every finalizer) runs while `_collecting` is True.
  if _gc_start not in gc.callbacks:
    gc.callbacks.insert(0, _gc_start)
  if _gc_stop not in gc.callbacks:
    gc.callbacks.append(_gc_stop)


def installed() -> bool:
  """Whether this module's SIGINT handler is the current one."""
  return signal.getsignal(signal.SIGINT) is _on_sigint


def check() -> None:
  """Raises ``KeyboardInterrupt`` if a Ctrl-C came and was swallowed."""
  if interrupted:
    raise KeyboardInterrupt
