"""What a run directory accepts: one writer at a time, and a consistent resume.

* `WorkdirLock`: an exclusive ``fcntl.flock`` on ``workdir/.lock`` held for
  the whole run. The kernel releases it when the holder exits, however it
  exits (``kill -9`` included), so a stale lock never blocks a resume; a second
  writer is refused with the holder's PID and host.
* `check_resume`: a workdir that already holds a run is resumed only with a
  config that gives the same trajectory. Fields in `RESUMABLE` (logging,
  evaluation, checkpoint cadence, probes, progress, the device mesh, the
  peak FLOP/s of the MFU) may
  change and the changes are recorded in ``workdir/resumes.jsonl``; any other
  difference (model, data, loss, optimizer, schedule, seed, ``num_steps``,
  EMA, branch...) refuses the resume, naming the fields and the way out. A
  field not listed is trajectory-changing by default, so a new field is safe
  until someone decides otherwise. A field in `SAME_MATH_UNLESS` changes the
  math where the run has what its entry names (``grad_accum_steps`` draws
  new dropout masks per micro-batch, takes BatchNorm statistics per
  micro-batch, and SAM perturbs per micro-batch): there it is refused too,
  naming why.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Any, Dict, Iterator, Mapping, Tuple

# Prefixes of fields that do not change what is computed; everything else
# must match. The last four change how (memory, kernels, layout), not what:
# the same math, though not always the same bits (summation order).
RESUMABLE = (
    'name', 'log_every', 'eval_every', 'eval_batches', 'log_per_layer',
    'progress', 'stop_on_nonfinite', 'distributed', 'checkpoint.', 'analysis.',
    'merge.', 'throughput.',
    'mesh.', 'optimizer.grad_accum_steps', 'model.remat', 'model.attention_impl',
)
LOCK_FILE = '.lock'
# Entries of config.json that are not config fields: the lineage, the data.
NOT_FIELDS = ('parent', 'data_manifest')


def _accumulation_changes_math(record: Mapping[str, Any]) -> list:
  """What in a flattened record makes ``grad_accum_steps`` change the math
  (see `dynamics.step`): each a ``config.FIELD=VALUE`` string."""
  why = []
  if record.get('model.dropout'):
    why.append(f"config.model.dropout={record['model.dropout']!r}")
  if record.get('model.norm') == 'batchnorm':
    why.append("config.model.norm='batchnorm'")
  if record.get('optimizer.sam.rho') is not None:
    why.append(f"config.optimizer.sam.rho={record['optimizer.sam.rho']!r}")
  return why


# Resumable fields that change the math where the run's record has what the
# function returns (a list of 'config.FIELD=VALUE' reasons; [] = same math).
SAME_MATH_UNLESS = {'optimizer.grad_accum_steps': _accumulation_changes_math}


class WorkdirBusyError(RuntimeError):
  """Another process is writing to the workdir."""


class ResumeMismatchError(ValueError):
  """The requested config would change the trajectory of the run it resumes."""


class WorkdirLock:
  """An exclusive lock on ``workdir`` for one writer (a context manager).

  Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with WorkdirLock(d):
    ...   try:
    ...     WorkdirLock(d).acquire()
    ...   except WorkdirBusyError as e:
    ...     print('refused:', str(e).split(':')[0])
    refused: another process is writing to this run
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock, or raises `WorkdirBusyError` naming the holder."""
    f = open(self.path, 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        f.close()
        raise
      f.seek(0)
      holder = f.read().strip() or 'unknown process'
      f.close()
      raise WorkdirBusyError(
          f'another process is writing to this run: {os.path.dirname(self.path)} '
          f'is locked by {holder}; wait for it to finish or use another '
          '--workdir') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on host {socket.gethostname()} since '
            f'{datetime.datetime.now().isoformat(timespec="seconds")}\n')
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      self._file.truncate(0)  # No claim left behind once released.
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


class WorkdirError(ValueError):
  """The workdir cannot hold a run (a file, or not writable)."""


@contextlib.contextmanager
def open_for_writing(workdir: str) -> Iterator[WorkdirLock]:
  """Creates ``workdir`` if needed and holds its lock while the block runs.

  Raises:
    WorkdirError: ``workdir`` is a file or cannot be written.
    WorkdirBusyError: another process holds the lock.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise WorkdirError(f'--workdir={workdir}: a file is in the way (a workdir '
                       'is a directory)') from None
  except PermissionError:
    raise WorkdirError(f'--workdir={workdir}: cannot create it (permission '
                       'denied)') from None
  except OSError as e:  # A read-only file system, a name too long...
    raise WorkdirError(f'--workdir={workdir}: cannot create it '
                       f'({e.strerror or e})') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir={workdir}: not writable')
  try:
    lock = WorkdirLock(workdir).acquire()
  except WorkdirBusyError:
    raise
  except OSError as e:  # A file system without flock, say.
    raise WorkdirError(f'--workdir={workdir}: cannot lock {LOCK_FILE} '
                       f'({e.strerror or e}); use a workdir on a file system '
                       'with flock') from None
  try:
    yield lock
  finally:
    lock.release()


def flatten(record: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  """``{'model.d_model': 64, ...}``: the leaves of a nested config record.

  Example:
    >>> flatten({'seed': 0, 'model': {'d_model': 64, 'sizes': (8, 8)}})
    {'seed': 0, 'model.d_model': 64, 'model.sizes': (8, 8)}
  """
  out = {}
  for key, value in record.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _as_json(value: Any) -> Any:
  """Tuples as ``config.json`` stores them (lists), to compare values."""
  return list(value) if isinstance(value, tuple) else value


def resumable(field: str) -> bool:
  """Whether ``field`` (e.g. 'checkpoint.every_steps') may change on resume."""
  return any(field == p or (p.endswith('.') and field.startswith(p))
             for p in RESUMABLE)


def config_changes(recorded: Mapping[str, Any], requested: Mapping[str, Any]
                   ) -> Dict[str, Tuple[Any, Any]]:
  """``{field: (recorded, requested)}`` for every differing field.

  Both are ``config.json``-style records; fields the recorded run lacks (it
  predates them) are not compared, and the entries in `NOT_FIELDS` are
  ignored.
  """
  old = flatten({k: v for k, v in recorded.items() if k not in NOT_FIELDS})
  new = flatten({k: v for k, v in requested.items() if k not in NOT_FIELDS})
  return {k: (_as_json(old[k]), _as_json(new[k])) for k in sorted(new)
          if k in old and _as_json(old[k]) != _as_json(new[k])}


def check_resume(recorded: Mapping[str, Any], requested: Mapping[str, Any],
                 workdir: str) -> Dict[str, Tuple[Any, Any]]:
  """The allowed changes of a resume, or `ResumeMismatchError`.

  Returns:
    ``{field: (recorded, requested)}`` of the changed fields, all resumable.

  Raises:
    ResumeMismatchError: a field that shapes the trajectory differs; the
      message names every such field with both values and the way out.
  """
  changes = config_changes(recorded, requested)
  refused = {k: v for k, v in changes.items() if not resumable(k)}
  old = flatten({k: v for k, v in recorded.items() if k not in NOT_FIELDS})
  for field, reasons in SAME_MATH_UNLESS.items():
    why = reasons(old) if field in changes and field not in refused else []
    if why:
      raise ResumeMismatchError(
          f'{workdir} holds a run with another config (config.{field}: '
          f'{changes[field][0]!r} -> {changes[field][1]!r}); with '
          f'{" and ".join(why)} it changes the trajectory (new dropout masks, '
          'BatchNorm statistics or SAM perturbations per micro-batch). Keep '
          f'config.{field}={changes[field][0]!r}, or use a new --workdir.')
  if refused:
    listed = ', '.join(f'config.{k}: {a!r} -> {b!r}'
                       for k, (a, b) in list(refused.items())[:5])
    more = f' (and {len(refused) - 5} more)' if len(refused) > 5 else ''
    raise ResumeMismatchError(
        f'{workdir} holds a run with another config ({listed}{more}); a '
        'resume must keep every field that shapes the trajectory. Use a new '
        '--workdir, or start a branch from one of its checkpoints '
        '(--config.branch.from_workdir, --config.branch.from_step, '
        '--config.branch.decay_steps).')
  return changes


def record_resume(path: str, step: int,
                  changes: Mapping[str, Tuple[Any, Any]]) -> None:
  """Appends the allowed changes of a resume at ``step`` to the JSON-lines
  file ``path`` (the run's ``resumes.jsonl``, named by `dynamics.runs`)."""
  if not changes:
    return
  entry = {'step': int(step),
           'time': datetime.datetime.now().isoformat(timespec='seconds'),
           'changed': {k: {'from': a, 'to': b} for k, (a, b) in changes.items()}}
  with open(path, 'a') as f:
    f.write(json.dumps(entry) + '\n')
