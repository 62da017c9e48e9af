"""Host-side helpers of the training loop: preemption flag, progress, logs.

Nothing here runs on the accelerator or enters a jitted function; the loop in
``dynamics.train`` calls these between steps.
"""

import contextlib
import json
import os
import signal
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from dynamics import metrics as metrics_lib
from dynamics import probes as probes_lib
from dynamics import progress
from dynamics import throughput as throughput_lib


class SigtermFlag:
  """Turns SIGTERM (preemption notice) into a flag read at step boundaries.

  With several processes they must all save at the same step: JAX's
  preemption service (started by ``jax.distributed.initialize``) catches
  SIGTERM on any host and agrees on a step, so no handler is installed here.
  """

  def __init__(self):
    self.raised = False
    self._multiprocess = jax.process_count() > 1
    if self._multiprocess:
      self._previous = None
      return
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self.raised = True

  def reached(self, step: int) -> bool:
    """True at the step boundary where every process should save and stop."""
    if self._multiprocess:
      from jax.experimental import multihost_utils
      self.raised = (self.raised or
                     multihost_utils.reached_preemption_sync_point(step))
    return self.raised

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> 'SigtermFlag':
    return self

  def __exit__(self, *exc) -> None:
    self.restore()


class Saver:
  """Checkpoints the state, the data position and the probes' state.

  With ``log_stall`` it records how long each save blocked the loop (async:
  the device-to-host copy only) for ``checkpoint_stall.jsonl``.
  """

  def __init__(self, ckpt, data_iter, probes: Sequence[probes_lib.Probe],
               log_stall: bool = False, check_finite: bool = True):
    self.ckpt, self.data_iter, self.probes = ckpt, data_iter, probes
    self.log_stall, self.stall = log_stall, []
    self.check_finite = check_finite

  def save(self, step: int, state: Any) -> None:
    """Checkpoints ``state``; refuses non-finite parameters (`NonFiniteError`).

    Norms are measured on logged steps only, so a diverged update can reach
    a checkpoint step before any logged metric shows it: the parameters are
    checked here, once per save.
    """
    if self.check_finite and not bool(_all_finite(state.params)):
      raise metrics_lib.NonFiniteError(
          f'non-finite parameters after step {step}')
    start = time.perf_counter()
    self.ckpt.save(step, state, self.data_iter.state(),
                   probes_lib.states(self.probes))
    if self.log_stall:
      self.stall.append((step, time.perf_counter() - start))

  def check(self) -> None:
    """Raises `dynamics.checkpoint.CheckpointSaveError` as soon as an
    asynchronous save has failed (a full disk): training stops at once."""
    self.ckpt.check_for_errors()

  @contextlib.contextmanager
  def guard(self):
    """Turns a `NonFiniteError` into one naming the last good checkpoint."""
    try:
      yield
    except metrics_lib.NonFiniteError as e:
      self.ckpt.wait()
      good = self.ckpt.all_steps()
      raise metrics_lib.NonFiniteError(
          f'{e}; training stopped. The last good checkpoint (step '
          f'{good[-1] if good else None}) is untouched.') from None

  def write_stall(self, workdir: str) -> None:
    """Appends each save's blocking time to checkpoint_stall.jsonl."""
    if not self.stall:
      return
    with open(os.path.join(workdir, 'checkpoint_stall.jsonl'), 'a') as f:
      for step, seconds in self.stall:
        f.write(json.dumps({'step': step, 'stall_s': round(seconds, 6),
                            'async': bool(self.ckpt.async_save)})
                + '\n')
    self.stall = []

  def close(self) -> None:
    self.ckpt.close()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def announce(config, dataset, state, workdir: str,
             resumed_from: Optional[int]) -> None:
  """The run's first line: model, data, optimizer, and where it starts."""
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  floor = dataset.info.loss_floor
  where = (f'resuming from step {resumed_from}' if resumed_from is not None
           else f'branching from {config.branch.from_workdir} step '
           f'{config.branch.from_step}' if config.branch.from_workdir
           else 'starting')
  print(f'[{config.name}] {config.model.name} with {n_params:,} parameters on '
        f'{config.data.name} data'
        + (f' (entropy rate, the best achievable loss: {floor:.4f} nats)'
           if floor is not None else '')
        + f'; {config.optimizer.name} with a {config.schedule.name} schedule '
        f'for {config.num_steps} steps; {where} in {workdir}', flush=True)


class Progress:
  """A tqdm bar (process 0, ``config.progress``) with loss, lr, tokens/s and
  MFU, and the throughput of each logged step for ``metrics.jsonl``.

  The loop calls ``mark(step)`` once per step after syncing on the previous
  step's metrics and adds ``rates(step)`` (`dynamics.throughput.Meter`) to
  the line of each logged step.
  """

  def __init__(self, config, start: int, total: int, params=None):
    self.log_every = config.log_every
    self.meter = throughput_lib.Meter(config, params,
                                      num_devices=jax.device_count())
    self._shown = {}
    self._bar = progress.bar(
        total, config.name, initial=start, dynamic_ncols=True, mininterval=1.0,
        enabled=bool(config.progress) and jax.process_index() == 0)

  def mark(self, step: int) -> None:
    """Step ``step``'s time (after the host synced on the previous step)."""
    self.meter.mark(step)

  def rates(self, step: int) -> Dict[str, float]:
    """Throughput since the previous logged step, for ``step``'s line."""
    out = self.meter.rates(step)
    if out:
      self._shown = out
    return out

  def update(self, step: int, last: Dict[str, float]) -> None:
    """Advances the bar; at logged steps shows the latest logged values
    (none before the first log line: no placeholder NaN that reads as a
    diverged run)."""
    self._bar.update(1)
    if step % self.log_every == 0:
      shown = {}
      if 'train_loss' in last:
        shown['loss'] = f"{last['train_loss']:.3f}"
      if 'learning_rate' in last:
        shown['lr'] = f"{last['learning_rate']:.2e}"
      rate = self._shown.get(self.meter.key)
      if rate is not None:
        shown['rate'] = f'{rate:.4g}/s'
      if 'mfu' in self._shown:
        shown['mfu'] = f"{100 * self._shown['mfu']:.1f}%"
      if shown:
        self._bar.set_postfix(**shown, refresh=False)

  def close(self) -> None:
    self._bar.close()
    self._bar = progress.NoBar()

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
