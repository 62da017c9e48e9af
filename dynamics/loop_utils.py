"""Host-side helpers of the training loop: preemption flag, progress, logs.

Nothing here runs on the accelerator or enters a jitted function; the loop in
``dynamics.train`` calls these between steps.
"""

import json
import os
import signal
from typing import List, Optional, Tuple

import jax


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


def write_stall(workdir: str, stall: List[Tuple[int, float]],
                 async_save: bool) -> None:
  """Appends each checkpoint save's blocking time to checkpoint_stall.jsonl."""
  with open(os.path.join(workdir, 'checkpoint_stall.jsonl'), 'a') as f:
    for step, seconds in stall:
      f.write(json.dumps({'step': step, 'stall_s': round(seconds, 6),
                          'async': bool(async_save)}) + '\n')


def announce(config, parts, state, workdir: str,
              resumed_from: Optional[int]) -> None:
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  floor = parts.dataset.info.loss_floor
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


def examples_per_step(config) -> int:
  """Tokens per step for language data, examples otherwise."""
  if config.data.name in ('markov', 'bytes', 'huggingface'):
    return config.data.batch_size * config.data.seq_len
  return config.data.batch_size


def progress_bar(config, start: int, total: int):
  if not config.progress or jax.process_index() != 0:
    return None
  try:
    from tqdm import auto as tqdm
  except ImportError:
    return None
  return tqdm.tqdm(total=total, initial=start, desc=config.name,
                   dynamic_ncols=True, mininterval=1.0)
