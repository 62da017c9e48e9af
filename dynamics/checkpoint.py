"""Checkpoints through orbax's ``CheckpointManager``.

A checkpoint at step N holds the ``TrainState`` after N updates (params,
optimizer state, model state, rng, EMA) and the data iterator's position, so a
run resumed from it continues exactly where it stopped. Periodic checkpoints
keep the latest ``max_to_keep``; the steps in ``keep_steps`` are kept forever.
"""

import json
import logging
import os
import shutil
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

PyTree = Any


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


class Checkpointer:
  """Saves and restores ``(state, data_state)`` pairs under ``workdir``."""

  def __init__(self, workdir: str, max_to_keep: int = 3,
               keep_steps: Iterable[int] = (), async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
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
                                 item_names=('state', 'data'))

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, data_state: Dict[str, int]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=True)

  def restore(self, step: int, abstract_state: PyTree
              ) -> Tuple[PyTree, Dict[str, int]]:
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return out.state, out.data

  def restore_latest(self, abstract_state: PyTree
                     ) -> Optional[Tuple[int, PyTree, Dict[str, int]]]:
    """The newest checkpoint that restores; corrupt ones are set aside.

    A checkpoint that fails to restore (truncated or corrupt files) is moved
    to ``workdir/corrupt_checkpoints/<step>`` with a warning, and the one
    before it is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        state, data_state = self.restore(step, abstract_state)
        return step, state, data_state
      except Exception as e:  # orbax raises many types for a bad checkpoint.
        logging.warning('Checkpoint at step %d does not restore (%s: %s); '
                        'setting it aside and trying the previous one.',
                        step, type(e).__name__, e)
        print(f'WARNING: checkpoint {step} is corrupt ({type(e).__name__}); '
              'resuming from the one before it.', flush=True)
        self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory),
                           'corrupt_checkpoints')
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)),
                  os.path.join(aside, str(step)))
    self._manager.close()
    self._manager = self._make_manager()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def available_steps(workdir: str) -> List[int]:
  """Steps with a checkpoint in ``workdir``."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run recorded in ``workdir/config.json``."""
  from configs import base
  with open(os.path.join(workdir, 'config.json')) as f:
    recorded = json.load(f)
  recorded.pop('parent', None)
  config = base.get_config()
  _update(config, recorded)
  return config


def _update(config: ml_collections.ConfigDict, values: Dict[str, Any]) -> None:
  for key, value in values.items():
    if isinstance(value, dict) and key in config:
      _update(config[key], value)
    else:
      with config.ignore_type():
        config[key] = tuple(value) if isinstance(value, list) else value


def load_checkpoint(workdir: str, step: Optional[int] = None
                    ) -> Tuple[ml_collections.ConfigDict, Any]:
  """Opens a run: ``(config, TrainState)`` at ``step`` (default: the latest).

  Example (in a notebook):
    >>> config, state = load_checkpoint('runs/wsd')            # doctest: +SKIP
    >>> logits = model.apply({'params': state.params}, batch['inputs'])  # doctest: +SKIP
  """
  from dynamics import train  # Late import: train imports this module.
  steps = available_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no checkpoints in {checkpoint_dir(workdir)}')
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise ValueError(f'no checkpoint at step {step} in {workdir}; '
                     f'available steps: {steps}')
  config = load_config(workdir)
  parts = train.build(config)
  abstract = jax.eval_shape(lambda: train.init_state(config, parts))
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    state, _ = ckpt.restore(step, abstract)
  finally:
    ckpt.close()
  return config, state


def save_params(workdir: str, step: int, params: PyTree,
                config: Optional[ml_collections.ConfigDict] = None) -> str:
  """Writes ``params`` as the checkpoint ``step`` of ``workdir`` (e.g. a merge).

  The state's other fields are those of a fresh ``init_state`` (step set to
  ``step``), so ``load_checkpoint`` opens it like any other checkpoint. Never
  overwrites: an existing step raises ``FileExistsError``.
  """
  from dynamics import train
  if step in available_steps(workdir):
    raise FileExistsError(f'checkpoint {step} already exists in {workdir}')
  config = config or load_config(workdir)
  parts = train.build(config)
  state = train.init_state(config, parts)
  state = state.replace(params=params, step=jax.numpy.asarray(step, state.step.dtype))
  ckpt = Checkpointer(workdir, max_to_keep=10**6, async_save=False)
  try:
    ckpt.save(step, state, {'position': step})
  finally:
    ckpt.close()
  return os.path.join(checkpoint_dir(workdir), str(step))
