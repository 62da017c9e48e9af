"""Checkpoints through orbax's ``CheckpointManager``: a thin wrapper.

A checkpoint at step N holds three items:

* ``state``: the pytree after N updates (for the trainer, a
  `dynamics.step.TrainState`: params, optimizer and model state, rng, EMA);
* ``data``: the data iterator's position (JSON), so a resumed run continues
  exactly where it stopped;
* ``probes`` (optional): the state of training-time probes by name (e.g.
  the kernel at initialization of an NTK probe), so that a resumed run
  continues the same series. Checkpoints written before the loop called
  them probes hold the same item as ``callbacks``; both restore.

Periodic checkpoints keep the latest ``max_to_keep``; the steps in
``keep_steps`` are kept forever. This module knows nothing of the trainer or
of configs: callers hand it pytrees and abstract pytrees
(`dynamics.runs.Run` is the one that knows what a run's state looks like).
"""

import errno
import os
import shutil
import traceback
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from dynamics.types import PyTree, param_name

# 'callbacks': the probes' item in checkpoints of earlier versions (read only).
_ITEMS = ('state', 'data', 'probes', 'callbacks')


class CheckpointMismatchError(ValueError):
  """A checkpoint is intact but holds a differently shaped state (the run's
  config changed); the message names the first differing parameters."""


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (a full disk, a read-only file
  system); the message names the directory and the cause, in one line."""


def _save_error(step: int, directory: str, error: BaseException
                ) -> CheckpointSaveError:
  """One line for a failed save of checkpoint ``step``."""
  cause = next((e for e in _chain(error) if isinstance(e, OSError)), None)
  if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
    why = f'the disk is full ({cause.strerror})'
  elif cause is not None:
    why = f'{cause.strerror or cause}' + (f' ({cause.filename})'
                                          if cause.filename else '')
  else:
    why = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
  return CheckpointSaveError(
      f'checkpoint {step} could not be saved in {directory}: {why}; training '
      'stopped (the checkpoints before it are intact; free space or fix the '
      'path, then re-run the same command to resume)')


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


class Restored(NamedTuple):
  """What `Checkpointer.restore` returns."""
  step: int
  state: PyTree
  data: Dict[str, Any]
  probes: Dict[str, Any]


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def available_steps(workdir: str) -> List[int]:
  """Steps with a checkpoint in ``workdir``, ascending.

  A step directory without its ``state`` item (an empty or half-deleted
  directory) is not a checkpoint; training sets such a directory aside.
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n, 'state')))


def _item_dir(workdir: str, step: int, item: str) -> str:
  return os.path.join(checkpoint_dir(workdir), str(step), item)


def _shapes(tree: PyTree) -> Dict[str, tuple]:
  """``{param_name: (shape, dtype)}`` of a pytree of arrays or metadata."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'shape'):
      out[param_name(path)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype))
                               if getattr(leaf, 'dtype', None) is not None
                               else None)
  return out


def state_mismatch(workdir: str, step: int, abstract_state: PyTree, *,
                   partial: bool = False) -> Optional[str]:
  """What differs between checkpoint ``step``'s stored state and
  ``abstract_state`` (names, shapes, dtypes), or None when they agree.

  Reads only the checkpoint's metadata. None also when the metadata cannot be
  read (a damaged checkpoint is not a mismatch). With ``partial``, entries
  stored but not asked for are not a difference.
  """
  try:  # The handler, not a Checkpointer: that one looks for a step's
    # metadata file in the item's directory and warns, for every healthy
    # checkpoint, that it does not exist.
    handler = ocp.PyTreeCheckpointHandler()
    try:
      meta = handler.metadata(epath.Path(_item_dir(workdir, step, 'state')))
    finally:
      handler.close()
    stored = _shapes(getattr(meta, 'item_metadata', meta).tree)
  except Exception:  # pylint: disable=broad-except
    return None
  wanted = _shapes(abstract_state)
  # orbax stores keys of a dataclass state as a dict: compare by name only.
  missing = sorted(set(wanted) - set(stored))
  extra = [] if partial else sorted(set(stored) - set(wanted))
  changed = sorted(k for k in set(wanted) & set(stored)
                   if wanted[k][0] != stored[k][0]
                   or (stored[k][1] is not None and wanted[k][1] != stored[k][1]))
  if not (missing or extra or changed):
    return None
  parts = []
  if changed:
    parts.append('shape/dtype differs for ' + ', '.join(
        f'{k} (checkpoint {stored[k][0]} {stored[k][1]}, now {wanted[k][0]} '
        f'{wanted[k][1]})' for k in changed[:3])
        + (f' and {len(changed) - 3} more' if len(changed) > 3 else ''))
  if missing:
    parts.append('not in the checkpoint: ' + ', '.join(missing[:3])
                 + (f' and {len(missing) - 3} more' if len(missing) > 3 else ''))
  if extra:
    parts.append('only in the checkpoint: ' + ', '.join(extra[:3])
                 + (f' and {len(extra) - 3} more' if len(extra) > 3 else ''))
  return '; '.join(parts)


def _placed(abstract_state: PyTree) -> PyTree:
  """``abstract_state`` with a sharding on every leaf that has none (the
  first local device): orbax then restores onto today's devices whatever
  topology saved the checkpoint (without a sharding it reuses the saved one,
  and a checkpoint of 2 devices cannot be read on 1: "Topology mismatch")."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def place(x):
    if isinstance(x, jax.ShapeDtypeStruct) and getattr(x, 'sharding',
                                                       None) is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
    return x
  return jax.tree.map(place, abstract_state)


class Checkpointer:
  """Saves and restores ``(state, data, probes)`` under ``workdir``."""

  def __init__(self, workdir: str, max_to_keep: int = 3,
               keep_steps: Iterable[int] = (), async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = checkpoint_dir(workdir)
    self.async_save = async_save
    self._last_saved = None
    self._options = dict(max_to_keep=max_to_keep, keep_steps=tuple(keep_steps),
                         async_save=async_save)
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    o = self._options
    policies = [checkpoint_managers.LatestN(o['max_to_keep'])]
    if o['keep_steps']:
      policies.append(checkpoint_managers.CustomSteps(list(o['keep_steps'])))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=o['async_save'], create=True)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_names=_ITEMS)

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, data_state: Mapping[str, Any],
           probes: Optional[Mapping[str, Any]] = None) -> None:
    """Saves checkpoint ``step`` (asynchronously when so configured)."""
    items = dict(state=ocp.args.StandardSave(state),
                 data=ocp.args.JsonSave(dict(data_state)))
    if probes:
      items['probes'] = ocp.args.StandardSave(dict(probes))
    self._last_saved = step
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
      self._manager.check_for_errors()  # An earlier async save's, too.
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(step, self.directory, e) from e

  def check_for_errors(self) -> None:
    """Raises `CheckpointSaveError` if an asynchronous save failed."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise _save_error(self._last_saved, self.directory, e) from e

  def restore(self, step: int, abstract_state: PyTree) -> Restored:
    """Checkpoint ``step`` restored into the layout of ``abstract_state``.

    Raises:
      CheckpointMismatchError: the checkpoint is readable but its state has
        other names or shapes than ``abstract_state``.
    """
    # Checked first, from the metadata alone: orbax's reads would fail on
    # the shapes anyway, but noisily and after starting their I/O.
    mismatch = state_mismatch(self.workdir, step, abstract_state)
    if mismatch is not None:
      raise CheckpointMismatchError(
          f'checkpoint {step} in {self.directory} holds a different state '
          f'than the one asked for (was the config changed?): {mismatch}')
    items = dict(state=ocp.args.StandardRestore(_placed(abstract_state)),
                 data=ocp.args.JsonRestore())
    probe_item = next((name for name in ('probes', 'callbacks') if os.path.isdir(
        _item_dir(self.workdir, step, name))), None)
    if probe_item is not None:
      items[probe_item] = ocp.args.StandardRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    probes = dict(out[probe_item]) if probe_item is not None else {}
    return Restored(step, out.state, out.data, probes)

  def restore_latest(self, abstract_state: PyTree) -> Optional[Restored]:
    """The newest checkpoint that restores; corrupt ones are set aside.

    A checkpoint that fails to restore because its files are damaged is moved
    to ``workdir/corrupt_checkpoints/<step>`` with a one-line warning (the
    details go to the log), and the one before it is tried. A checkpoint that
    is intact but holds a differently shaped state is not corrupt: that raises
    `CheckpointMismatchError` and nothing is moved.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # orbax raises many types for a bad checkpoint.
        self._set_aside(step, e)
        print(f'WARNING: checkpoint {step} is corrupt ({type(e).__name__}); '
              f'moved to corrupt_checkpoints/{step} (details in '
              f'corrupt_checkpoints/{step}.error.txt); resuming from the one '
              'before it.', flush=True)
    return None

  def _set_aside(self, step: int, error: BaseException) -> None:
    if jax.process_index() == 0:
      aside = os.path.join(self.workdir, 'corrupt_checkpoints')
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, str(step))
      if os.path.exists(target):
        shutil.rmtree(target)
      shutil.move(os.path.join(self.directory, str(step)), target)
      with open(target + '.error.txt', 'w') as f:
        f.write(''.join(traceback.format_exception(error)))
    self._manager.close()
    self._manager = self._make_manager()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and closes (idempotent)."""
    if self._manager is not None:
      manager, self._manager = self._manager, None
      try:
        manager.wait_until_finished()
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        raise _save_error(self._last_saved, self.directory, e) from e

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def restore(workdir: str, step: int, abstract_state: PyTree) -> Restored:
  """One checkpoint of ``workdir``, read synchronously (no retention)."""
  ckpt = Checkpointer(workdir, max_to_keep=10**9, async_save=False)
  try:
    return ckpt.restore(step, abstract_state)
  finally:
    ckpt.close()


def restore_subtree(workdir: str, step: int, abstract: Mapping[str, PyTree]
                    ) -> Dict[str, PyTree]:
  """Only some fields of checkpoint ``step``'s state (orbax partial restore).

  Args:
    workdir: the run directory.
    step: a checkpoint step.
    abstract: ``{field: abstract pytree}`` for the wanted top-level fields of
      the stored state, e.g. ``{'params': abstract_state.params}``.

  Returns:
    ``{field: pytree}`` of arrays; nothing else is read from disk.
  """
  def restore_args(x):
    sharding = getattr(x, 'sharding', None) or jax.sharding.SingleDeviceSharding(
        jax.local_devices()[0])
    return ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype)

  args = ocp.args.PyTreeRestore(
      item=dict(abstract), restore_args=jax.tree.map(restore_args, dict(abstract)),
      partial_restore=True)
  mismatch = state_mismatch(workdir, step, dict(abstract), partial=True)
  if mismatch is not None:
    raise CheckpointMismatchError(
        f'checkpoint {step} in {checkpoint_dir(workdir)}: {mismatch}')
  with ocp.PyTreeCheckpointer() as reader:
    return dict(reader.restore(_item_dir(workdir, step, 'state'), args=args))


def save(workdir: str, step: int, state: PyTree, data_state: Mapping[str, Any]
         ) -> str:
  """Writes one checkpoint synchronously; never overwrites one.

  Raises:
    FileExistsError: ``workdir`` already has a checkpoint at ``step``.
  """
  if step in available_steps(workdir):
    raise FileExistsError(f'checkpoint {step} already exists in '
                          f'{checkpoint_dir(workdir)}')
  ckpt = Checkpointer(workdir, max_to_keep=10**9, async_save=False)
  try:
    ckpt.save(step, state, data_state)
  finally:
    ckpt.close()
  return os.path.join(checkpoint_dir(workdir), str(step))
