"""A run: its config, the parts built from it, its checkpoints and files.

Every command, analysis, notebook, merge and benchmark opens a run the same
way and builds it once::

  run = Run.open('runs/wsd')              # config.json -> model, data, optimizer
  params = run.params(2000)               # only the parameters (partial restore)
  state = run.state()                     # the whole TrainState, latest step
  loss = run.loss_fn(state.model_state)   # (params, batch) -> scalar, eval mode
  lines = run.metrics()                   # metrics.jsonl, one dict per line

``Run.create`` records a new run (training, a merge) and ``Run.open`` opens
one: this module alone names a run directory's files. ``Run(config)`` (no
workdir) is the same handle for a config not trained, e.g. in a notebook.
"""

import functools
import json
import operator
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import ml_collections
import optax

from dynamics import checkpoint as checkpoint_lib
from dynamics import config_migrate
from dynamics import data as data_lib
from dynamics import metrics as metrics_lib
from dynamics import parts as parts_lib
from dynamics import step as step_lib
from dynamics import workdir as workdir_lib
from dynamics.types import ApplyFn, Batch, LossFn, PyTree


# Re-exported: ``runs.build(config)`` is how everything builds a config.
Parts, build, init_state, evaluate = (parts_lib.Parts, parts_lib.build,
                                      parts_lib.init_state, parts_lib.evaluate)


class RunNotFoundError(FileNotFoundError):
  """A workdir without a recorded run, or a step without a checkpoint."""


# ---------------------------------------------------------------------------
# The run directory: its files are named here and nowhere else.

CONFIG_FILE = 'config.json'      # Every field of the config, and the lineage.
METRICS_FILE = 'metrics.jsonl'   # One JSON object per logged step.
RESUMES_FILE = 'resumes.jsonl'   # The allowed config changes of each resume.
MERGE_FILE = 'merge.json'        # A merge output: what was merged, and how.
TENSORBOARD_DIR = 'tensorboard'  # Event files, rewritten from metrics.jsonl.
HISTOGRAMS_FILE = 'histograms.jsonl'  # Histogram metrics (weights, ...).

RunFileError = metrics_lib.RunFileError


def _write_json(path: str, value: Mapping[str, Any]) -> None:
  """Writes ``value`` to ``path`` atomically (a crash leaves the old file)."""
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def config_record(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The JSON-able dict that ``config.json`` holds (no deprecated fields;
  ``data.path`` absolute, so that the run opens from any directory)."""
  record = config_migrate.migrate_flat_fields(
      json.loads(config.to_json_best_effort()))
  if record.get('data', {}).get('path'):
    record['data']['path'] = os.path.realpath(record['data']['path'])
  return record


def read_record(workdir: str) -> Dict[str, Any]:
  """``workdir/config.json`` as a dict (with the lineage ``parent``, if any).
  A record of the flat optimizer layout comes back in today's sections
  (`config_migrate.migrate_flat_fields`): old runs open with their values.

  Raises:
    RunNotFoundError: ``workdir`` holds no recorded run.
    RunFileError: the file is not JSON (named, with the line).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunNotFoundError(f'{workdir} holds no run ({CONFIG_FILE} is missing)')
  try:
    with open(path) as f:
      record = json.load(f)
  except ValueError as e:
    raise RunFileError(f'{path}: not a JSON record ({e})') from None
  return config_migrate.migrate_flat_fields(record)


def holds_run(workdir: str) -> bool:
  """Whether ``workdir`` holds a run (a recorded config or checkpoints)."""
  return (os.path.isfile(os.path.join(workdir, CONFIG_FILE))
          or os.path.isdir(checkpoint_lib.checkpoint_dir(workdir)))


def merge_source(workdir: str) -> Optional[str]:
  """The run a merge output was merged from (its ``merge.json``), if any."""
  try:
    with open(os.path.join(workdir, MERGE_FILE)) as f:
      return json.load(f).get('source')
  except (OSError, ValueError):
    return None


# ---------------------------------------------------------------------------
# The handle.


class Run:
  """A config, the parts built from it, and (with a workdir) its files.

  ``Run.create`` records a new run in a directory and ``Run.open`` opens a
  recorded one: the only doors to a run directory, whose files only this
  module names. The parts (dataset, model, optimizer...) are built on first
  use, so reading a run's record or metrics builds nothing.

  Attributes:
    config: the run's config (for an opened run, the one it recorded).
    workdir: the run directory (absolute), or None for a config not trained.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               workdir: Optional[str] = None, parts: Optional[Parts] = None):
    self.config = config
    self.workdir = None if workdir is None else os.path.abspath(workdir)
    self._parts = parts
    self._record = None

  @classmethod
  def create(cls, workdir: str, config: ml_collections.ConfigDict,
             parent: Optional[Mapping[str, Any]] = None,
             data_manifest: Optional[Mapping[str, Any]] = None) -> 'Run':
    """Records a run in ``workdir`` (created and locked by the caller):
    ``config.json`` holds every field of ``config``, as ``parent`` the
    ``{'workdir', 'step'}`` of the checkpoint it starts from (a branch's
    parent, a merge's source) and, as ``data_manifest``, what identifies its
    token files (`dynamics.data.manifest`)."""
    record = config_record(config)
    if parent is not None:
      record['parent'] = {'workdir': os.path.abspath(parent['workdir']),
                          'step': int(parent['step'])}
    if data_manifest is not None:
      record['data_manifest'] = dict(data_manifest)
    run = cls(config, workdir)
    _write_json(run._path(CONFIG_FILE), record)
    run._record = record
    return run

  @classmethod
  def open(cls, workdir: str) -> 'Run':
    """Opens the run recorded in ``workdir`` (its ``config.json``); fields
    an older run lacks get their declared default (`config_migrate.config_from_record`).

    Raises:
      RunNotFoundError: ``workdir`` holds no recorded run.
      RunFileError: its ``config.json`` is damaged.
    """
    record = read_record(workdir)
    run = cls(config_migrate.config_from_record(record), workdir)
    run._record = record
    return run

  # -- the run directory ------------------------------------------------------

  def _path(self, name: str) -> str:
    if self.workdir is None:
      raise RunNotFoundError('this run has no workdir, hence no files')
    return os.path.join(self.workdir, name)

  @property
  def record(self) -> Dict[str, Any]:
    """``config.json`` as a dict (every field, and ``parent`` for a branch or
    a merge); for a run not recorded yet, the record its config would get."""
    if self._record is None:
      if self.workdir is None or not os.path.isfile(self._path(CONFIG_FILE)):
        return config_record(self.config)
      self._record = read_record(self.workdir)
    return self._record

  @property
  def parent(self) -> Optional[Dict[str, Any]]:
    """``{'workdir', 'step'}`` of the run this one branched (or was merged)
    from, if any."""
    return self.record.get('parent')

  @property
  def metrics_path(self) -> str:
    """The run's metrics file (one JSON object per logged step)."""
    return self._path(METRICS_FILE)

  def metrics(self) -> List[Dict[str, Any]]:
    """The logged lines as dicts, in order ([] before the first one).

    A torn last line (a crash's partial write or NUL padding) is dropped
    with a one-line warning naming the file.

    Raises:
      RunFileError: an unreadable line before a good one (file and line).
    """
    if self.workdir is None:
      return []
    return metrics_lib.read_records(self.metrics_path)

  def metric_writer(self, resume_step: Optional[int] = None,
                    enabled: bool = True) -> metrics_lib.MetricWriter:
    """A writer appending to the run's metrics (and TensorBoard files);
    lines after ``resume_step`` are dropped first (see `MetricWriter`)."""
    return metrics_lib.MetricWriter(self.metrics_path, resume_step, enabled,
                                    self._path(TENSORBOARD_DIR),
                                    self._path(HISTOGRAMS_FILE))

  def record_resume(self, step: int,
                    changes: Mapping[str, Tuple[Any, Any]]) -> None:
    """Appends a resume's allowed config changes (``{field: (old, new)}``)
    to ``resumes.jsonl`` and re-records ``config.json``, lineage and data
    manifest kept."""
    if not changes:
      return
    kept = {k: self.record[k] for k in workdir_lib.NOT_FIELDS
            if k in self.record}
    workdir_lib.record_resume(self._path(RESUMES_FILE), step, changes)
    record = {**config_record(self.config), **kept}
    _write_json(self._path(CONFIG_FILE), record)
    self._record = record

  def resumes(self) -> List[Dict[str, Any]]:
    """The entries of ``resumes.jsonl``: each resume's allowed changes."""
    return metrics_lib.read_records(self._path(RESUMES_FILE))

  def write_merge(self, record: Mapping[str, Any]) -> None:
    """Records what this merge output was merged from (``merge.json``;
    ``record['source']`` is the source run's workdir)."""
    _write_json(self._path(MERGE_FILE), record)

  # -- the parts ------------------------------------------------------------

  @property
  def parts(self) -> Parts:
    """Dataset, model, schedule, optimizer and step options, built once."""
    if self._parts is None:
      self._parts = build(self.config)
    return self._parts

  @property
  def dataset(self) -> data_lib.Dataset: return self.parts.dataset  # noqa: E704

  @property
  def model(self) -> nn.Module: return self.parts.model  # noqa: E704

  @property
  def schedule(self) -> optax.Schedule: return self.parts.schedule  # noqa: E704

  @property
  def tx(self) -> optax.GradientTransformation: return self.parts.tx  # noqa: E704

  @property
  def options(self) -> step_lib.StepOptions: return self.parts.options  # noqa: E704

  # -- states ---------------------------------------------------------------

  def init_state(self) -> step_lib.TrainState:
    """The state at step 0 (deterministic in ``config.seed``)."""
    return init_state(self.config, self.parts)

  @functools.cached_property
  def abstract_state(self) -> step_lib.TrainState:
    """Shapes and dtypes of the state (``jax.ShapeDtypeStruct`` leaves)."""
    return jax.eval_shape(self.init_state)

  @property
  def steps(self) -> List[int]:
    """Steps with a checkpoint, ascending (read from disk at each call)."""
    if self.workdir is None:
      return []
    return checkpoint_lib.available_steps(self.workdir)

  def resolve_step(self, step: Optional[int] = None) -> int:
    """``step``, checked against the checkpoints on disk; None: the latest."""
    steps = self.steps
    if self.workdir is None:
      raise RunNotFoundError('this run has no workdir, hence no checkpoints')
    if not steps:
      raise RunNotFoundError(
          f'no checkpoints in {checkpoint_lib.checkpoint_dir(self.workdir)}')
    if step is None:
      return steps[-1]
    try:
      step = operator.index(step)
    except TypeError:
      raise TypeError(f'step must be an integer, got {step!r} '
                      f'({type(step).__name__}); available steps: '
                      f'{steps}') from None
    if step not in steps:
      raise RunNotFoundError(f'no checkpoint at step {int(step)} in '
                             f'{self.workdir}; available steps: {steps}')
    return int(step)

  def state(self, step: Optional[int] = None, abstract: Optional[PyTree] = None
            ) -> step_lib.TrainState:
    """The whole ``TrainState`` of checkpoint ``step`` (default: the latest).

    ``abstract`` places it (e.g. a sharded state's shardings); default: the
    run's abstract state on the default device.
    """
    step = self.resolve_step(step)
    return checkpoint_lib.restore(self.workdir, step,
                                  abstract or self.abstract_state).state

  def restore(self, step: Optional[int] = None,
              fields: tuple = ('params',)) -> Dict[str, PyTree]:
    """Only the named fields of checkpoint ``step``'s state, e.g.
    ``('params', 'model_state')``: nothing else is read from disk."""
    step = self.resolve_step(step)
    wanted = {f: getattr(self.abstract_state, f) for f in fields}
    # Fields without arrays (no EMA, a stateless model) are not stored.
    stored = {f: v for f, v in wanted.items() if jax.tree.leaves(v)}
    out = (checkpoint_lib.restore_subtree(self.workdir, step, stored)
           if stored else {})
    return {**wanted, **out}

  def params(self, step: Optional[int] = None) -> PyTree:
    """Checkpoint ``step``'s parameters where the model is evaluated."""
    return parts_lib.eval_point(self.config, lambda f: self.restore(step, f))

  # -- functions of the parameters -----------------------------------------

  def loss_fn(self, model_state: PyTree = None) -> LossFn:
    """``(params, batch) -> loss`` in inference mode (deterministic)."""
    return parts_lib.loss_fn(self.parts, model_state)

  def apply_fn(self, model_state: PyTree = None) -> ApplyFn:
    """``(params, inputs) -> outputs`` in inference mode."""
    return parts_lib.apply_fn(self.parts, model_state)

  def model_fn(self, model_state: PyTree = None
               ) -> Callable[[PyTree, Batch], jax.Array]:
    """``(params, batch) -> outputs``: with `output_loss_fn`,
    ``output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)`` (GGN products)."""
    apply = self.apply_fn(model_state)
    return lambda params, batch: apply(params, batch['inputs'])

  def output_loss_fn(self) -> Callable[[jax.Array, Batch], jax.Array]:
    """``(outputs, batch) -> loss``, the loss as a function of the outputs."""
    return parts_lib.output_loss_fn(self.parts)

  def probe_batches(self, n: int) -> List[Batch]:
    """``n`` fixed held-out batches, the same at every call (probes use them;
    they are disjoint from the ``eval_batch(0..)`` the loop evaluates on)."""
    return [self.dataset.eval_batch(10_000 + i) for i in range(n)]

  # -- compiled steps -------------------------------------------------------

  @functools.cached_property
  def train_step(self):
    """The jitted ``train_step(state, batch)`` (state donated)."""
    p = self.parts
    return step_lib.make_train_step(p.model, p.tx, p.schedule, p.options)

  @functools.cached_property
  def eval_step(self):
    """The jitted ``eval_step(params, model_state, batch)``."""
    return step_lib.make_eval_step(self.model, self.options)

  def evaluate(self, params: PyTree, model_state: PyTree = None,
               num_batches: Optional[int] = None, eval_fn=None,
               put: Optional[Callable[[Batch], Batch]] = None
               ) -> Dict[str, float]:
    """Mean eval metrics over the first ``num_batches`` held-out batches
    (default ``config.eval_batches``), as the training loop computes them."""
    return evaluate(params, {} if model_state is None else model_state,
                    self.dataset, eval_fn or self.eval_step,
                    num_batches or self.config.eval_batches, put)
