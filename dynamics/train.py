"""The training loop: ``train_and_evaluate(config, workdir)``.

Data flows one way: ``config -> Run (model, data, optimizer, schedule) ->
train_step -> checkpoints + metrics``. The step itself lives in
`dynamics.step`; this module only drives it: resume, place on devices, step,
evaluate, call the probes (`dynamics.probes`), log, checkpoint, stop.
"""

import contextlib
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from dynamics import checkpoint as checkpoint_lib
from dynamics import config_lib
from dynamics import data as data_lib
from dynamics import interrupts
from dynamics import loop_utils
from dynamics import metrics as metrics_lib
from dynamics import parts as parts_lib
from dynamics import probes as probes_lib
from dynamics import runs
from dynamics import sharding as sharding_lib
from dynamics import step as step_lib
from dynamics import workdir as workdir_lib

NonFiniteError = metrics_lib.NonFiniteError
TrainState = step_lib.TrainState


class Preempted(Exception):
  """SIGTERM arrived; the state was checkpointed at a step boundary."""


def keep_steps(config: ml_collections.ConfigDict) -> Tuple[int, ...]:
  """Steps whose checkpoints are kept forever: ``checkpoint.keep_steps``,
  WSD-S budgets, multiples of ``merge.interval``, and the final step."""
  keep = set(int(s) for s in config.checkpoint.keep_steps)
  if config.schedule.name == 'wsd_s' and config.schedule.budgets:
    keep.update(int(b) for b in config.schedule.budgets)
  if config.merge.interval:
    keep.update(range(config.merge.interval, config.num_steps + 1,
                      config.merge.interval))
  keep.add(int(config.num_steps))
  return tuple(sorted(keep))


def resolve_branch(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A branch runs ``from_step + decay_steps`` steps in total."""
  if config.branch.from_step is None:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.num_steps = int(config.branch.from_step + config.branch.decay_steps)
  return config


def _placement(run: runs.Run, state: TrainState):
  """``(state, shardings, put_batch, put_eval_batch)`` for the devices."""
  if jax.device_count() == 1:  # One device: plain jit.
    put = lambda b: jax.tree.map(jnp.asarray, b)
    return state, None, put, put
  shardings = sharding_lib.TrainShardings.create(
      sharding_lib.make_mesh(run.config.mesh), state,
      run.config.mesh.fsdp_min_size)
  # Placed before restoring, so orbax restores straight into the layout.
  return (shardings.put_state(state), shardings, shardings.put_batch,
          shardings.put_full_batch)


def _resume(run: runs.Run, ckpt: checkpoint_lib.Checkpointer, state: TrainState,
            data_iter: data_lib.DataIterator,
            probes: Sequence[probes_lib.Probe]
            ) -> Tuple[TrainState, Optional[int]]:
  """The state to start from and the step resumed from (None: a new run).

  Restores the run's latest good checkpoint (data position and probe state
  included) or, for a new branch, the parent's checkpoint.
  """
  config = run.config
  restored = ckpt.restore_latest(state)
  if restored is None and config.branch.from_workdir is not None:
    parent, step = _branch_parent(config), config.branch.from_step
    parent_state = checkpoint_lib.restore(parent.workdir, step, state)
    data_iter.restore(parent_state.data)
    probes_lib.restore(probes, parent_state.probes)  # A branch continues them.
    return parent_state.state, None
  if restored is None:
    return state, None
  data_iter.restore(restored.data)
  probes_lib.restore(probes, restored.probes)  # By name.
  return restored.state, restored.step


def _branch_parent(config: ml_collections.ConfigDict) -> runs.Run:
  """The run a new branch starts from, with its checkpoint ``from_step``."""
  b = config.branch
  try:
    parent = runs.Run.open(b.from_workdir)
  except runs.RunNotFoundError as e:
    raise config_lib.ConfigError(
        f'config.branch.from_workdir={b.from_workdir}: {e}') from None
  try:
    parent.resolve_step(b.from_step)
  except runs.RunNotFoundError as e:
    raise config_lib.ConfigError(
        f'config.branch.from_step={b.from_step}: {e}') from None
  if 'data_manifest' in parent.record and config.data.name == 'tokens':
    from dynamics.data import manifest  # pylint: disable=g-import-not-at-top
    differs = manifest.manifest_difference(parent.record['data_manifest'],
                                           _data_manifest(config))
    if differs is not None:
      raise config_lib.ConfigError(
          f'config.branch.from_workdir={b.from_workdir}: its run was trained '
          f'on other data than config.data.path={config.data.path} holds '
          f'({differs})')
  return parent


def _config_changes(config: ml_collections.ConfigDict, workdir: str,
                    rerecord_config: bool = False
                    ) -> Dict[str, Tuple[Any, Any]]:
  """The allowed config changes of a resume (see `dynamics.workdir`).

  Raises:
    WorkdirError: checkpoints without ``config.json`` (nothing to check the
      resume against), unless ``rerecord_config``.
  """
  try:
    recorded = runs.read_record(workdir)
  except runs.RunNotFoundError:  # A new run, or a record lost.
    steps = checkpoint_lib.available_steps(workdir)
    if steps and not rerecord_config:
      raise workdir_lib.WorkdirError(
          f'{workdir} holds checkpoints (steps {steps[0]}..{steps[-1]}) but no '
          f'{runs.CONFIG_FILE}, so this resume cannot be checked against the '
          f'config that trained them: put {runs.CONFIG_FILE} back, or pass '
          '--rerecord_config to record this config after checking it against '
          'the checkpoint\'s shapes (only the shapes can be checked)') from None
    return {}
  requested = runs.config_record(config)
  recorded, moved = _same_data(recorded, requested, config, workdir)
  return {**workdir_lib.check_resume(recorded, requested, workdir), **moved}


def _data_manifest(config: ml_collections.ConfigDict) -> Optional[Dict]:
  """What identifies the run's token files (None for other data)."""
  if config.data.name != 'tokens':
    return None
  from dynamics.data import manifest  # pylint: disable=g-import-not-at-top
  return manifest.manifest(config.data.path)


def _same_data(recorded: Dict[str, Any], requested: Dict[str, Any],
               config: ml_collections.ConfigDict, workdir: str
               ) -> Tuple[Dict[str, Any], Dict[str, Tuple[Any, Any]]]:
  """``(recorded, moved)``: token data is the same by its manifest, not by
  its path. The same data elsewhere is an allowed change of ``data.path``
  (``moved``, for ``resumes.jsonl``); other data is refused naming the shard.
  Runs recorded before manifests compare real paths."""
  old, new = recorded.get('data', {}), requested['data']
  if config.data.name != 'tokens' or old.get('name') != 'tokens':
    return recorded, {}
  same_place = (old.get('path') is not None and
                os.path.realpath(old['path']) == new['path'])
  if 'data_manifest' in recorded:
    from dynamics.data import manifest  # pylint: disable=g-import-not-at-top
    differs = manifest.manifest_difference(recorded['data_manifest'],
                                           _data_manifest(config))
    if differs is not None:
      raise workdir_lib.ResumeMismatchError(
          f'{workdir} was trained on other data than config.data.path='
          f'{config.data.path} holds now ({differs}); a resume must read the '
          'same token files. Use a new --workdir, or prepare the data again.')
  elif not same_place:
    return recorded, {}  # Nothing to compare but the paths: they differ.
  recorded = {**recorded, 'data': {**old, 'path': new['path']}}
  return recorded, {} if same_place else {'data.path': (old['path'],
                                                        new['path'])}


def _record_config(run: runs.Run, resumed_from: Optional[int],
                   changes: Dict[str, Tuple[Any, Any]]) -> None:
  """Records a new run (after a good start, so a start that failed leaves no
  record to refuse the corrected config) or a run whose record was lost; a
  resume's allowed changes."""
  if resumed_from is None or not os.path.isfile(
      os.path.join(run.workdir, runs.CONFIG_FILE)):
    b = run.config.branch
    runs.Run.create(run.workdir, run.config, parent=None
                    if b.from_workdir is None else
                    {'workdir': b.from_workdir, 'step': b.from_step},
                    data_manifest=_data_manifest(run.config))
  else:
    run.record_resume(resumed_from, changes)


def _host_metrics(step: int, state: TrainState, run: runs.Run, eval_fn, put,
                  probes: Sequence[probes_lib.Probe]) -> Dict[str, float]:
  """Eval and probe results due at ``step`` (after ``step`` updates)."""
  config, out = run.config, {}
  if step % config.eval_every == 0 or step == config.num_steps:
    ev = run.evaluate(parts_lib.eval_params(config, state.opt_state,
                                            state.params),
                      state.model_state, eval_fn=eval_fn, put=put)
    out.update({f'eval_{k}': v for k, v in ev.items()})
    if state.ema_params is not None:
      ev = run.evaluate(state.ema_params, state.model_state, eval_fn=eval_fn,
                        put=put)
      out.update({f'eval_{k}_ema': v for k, v in ev.items()})
  for probe in probes:
    if step % probe.every == 0:
      out.update({k: v if isinstance(v, metrics_lib.Histogram) else float(v)
                  for k, v in probe(state, run).items()})
  metrics_lib.check_finite(out, step, config.stop_on_nonfinite)
  return out


def _due(step: int, config, probes, keep) -> Tuple[bool, bool]:
  """``(save, measure)``: whether ``step`` checkpoints / evaluates or probes."""
  save = step % config.checkpoint.every_steps == 0 or step in keep
  measure = step % config.eval_every == 0 or step == config.num_steps or any(
      step % probe.every == 0 for probe in probes)
  return save, measure


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       probes: Sequence[probes_lib.Probe] = (),
                       rerecord_config: bool = False) -> TrainState:
  """Trains ``config`` into ``workdir``, resuming from its latest checkpoint.

  Writes ``workdir/config.json``, ``workdir/metrics.jsonl`` (one line per
  logged step; train metrics at ``log_every``, ``eval_*`` at ``eval_every``
  and at the end, probe results at their own period) and orbax
  checkpoints under ``workdir/checkpoints``.

  Args:
    config: a config declaring the fields of ``dynamics/config_schema.py``.
    workdir: output directory; an existing run there is resumed.
    probes: training-time measurements (`dynamics.probes.Probe`): each is
      called as ``probe(state, run) -> dict of scalars`` (or `Histogram`s) whenever
      ``state.step % probe.every == 0`` (step 0 included; ``run`` is the
      `dynamics.runs.Run`); its ``state_dict()`` is checkpointed under its
      ``name``, so a resumed run continues the same series.
    rerecord_config: a workdir whose checkpoints lost their ``config.json``
      resumes with ``config`` (checked against the checkpoint's shapes) and
      records it; without it such a workdir is refused.

  Returns:
    The final ``TrainState``.

  Raises:
    ConfigError: an invalid value (before compiling).
    ValueError: two probes with one name, or a bad period.
    NonFiniteError: a NaN/Inf metric; the last good checkpoint is kept.
    Preempted: SIGTERM; the state was saved at the next step boundary.
  """
  sharding_lib.maybe_initialize_distributed(config)  # Before any device use.
  config_lib.validate(config, device_count=jax.device_count())
  probes_lib.check(probes)
  config = resolve_branch(config)
  is_main, workdir = jax.process_index() == 0, os.path.abspath(workdir)
  with contextlib.ExitStack() as cleanup:  # Closes the checkpointer, unlocks.
    if is_main:  # One writer per workdir; under jax.distributed, process 0.
      cleanup.enter_context(workdir_lib.open_for_writing(workdir))
    stop = cleanup.enter_context(loop_utils.SigtermFlag())  # Saves, then stops.
    changes = _config_changes(config, workdir, rerecord_config)
    run = runs.Run(config, workdir)
    state, shardings, put_batch, put_eval = _placement(run, run.init_state())
    ckpt = cleanup.enter_context(checkpoint_lib.Checkpointer(
        workdir, config.checkpoint.max_to_keep, keep_steps(config),
        config.checkpoint.async_save))
    data_iter = data_lib.DataIterator(run.dataset, process_index=jax.process_index(),
                                      process_count=jax.process_count())
    state, resumed_from = _resume(run, ckpt, state, data_iter, probes)
    if is_main:
      _record_config(run, resumed_from, changes)
      loop_utils.announce(config, run.dataset, state, workdir, resumed_from)
    start, final, keep = int(state.step), config.num_steps, set(keep_steps(config))
    # A fresh start rewrites step 0 on: drop lines of an attempt that died early.
    writer = cleanup.enter_context(run.metric_writer(
        resume_step=start if resumed_from is not None else -1, enabled=is_main))
    p = run.parts
    step_fn = step_lib.make_train_step(p.model, p.tx, p.schedule, p.options,
                                       shardings)
    eval_fn = step_lib.make_eval_step(p.model, p.options, shardings)
    pipeline = metrics_lib.StepMetrics(config.log_every, final,
                                       config.stop_on_nonfinite)
    saver = loop_utils.Saver(ckpt, data_iter, probes,
                             config.checkpoint.log_stall and is_main,
                             config.stop_on_nonfinite)
    cleanup.callback(saver.write_stall, workdir)
    progress = cleanup.enter_context(loop_utils.Progress(config, start, final,
                                                       state.params))
    if start == 0:
      with saver.guard():
        writer.write_nonempty(0, _host_metrics(0, state, run, eval_fn, put_eval,
                                               probes))
        if 0 in keep:  # The initialization, for NTK-drift and Jacobian studies.
          saver.save(0, state)
    for step in range(start + 1, final + 1):
      state, metrics = step_fn(state, put_batch(next(data_iter)))
      pipeline.push(step, metrics)
      preempted = stop.reached(step)
      save, measure = _due(step, config, probes, keep)
      with saver.guard():  # A NaN names the last good checkpoint.
        # Synchronous before a save or a measurement, else one step late.
        lines = pipeline.pop(step if save or measure or preempted else step - 1)
        progress.mark(step)  # Synced on step - 1 (or step): its time.
        extra = _host_metrics(step, state, run, eval_fn, put_eval,
                              probes) if measure else {}
        if extra:
          lines.setdefault(step, {}).update(extra)
        for s in sorted(lines):
          writer.write(s, {**lines[s], **progress.rates(s)})
        if save or preempted:
          saver.save(step, state)  # Refuses non-finite parameters.
      progress.update(step, pipeline.last)
      saver.check()  # A failed async save stops training here.
      interrupts.check()  # A Ctrl-C that a library swallowed stops here.
      if preempted and step != final:
        raise Preempted(f'SIGTERM: saved step {step} in {workdir}; re-run the '
                        'same command to resume.')
  return state
