"""A run: its config, the parts built from it, and its checkpoints.

Every command, analysis, notebook, merge and benchmark opens a run the same
way and builds it once::

  run = Run.open('runs/wsd')              # config.json -> model, data, optimizer
  params = run.params(2000)               # only the parameters (partial restore)
  state = run.state()                     # the whole TrainState, latest step
  loss = run.loss_fn(state.model_state)   # (params, batch) -> scalar, eval mode

``Run(config)`` (no workdir) gives the same handle for a config that has not
been trained, e.g. to replay its steps in a notebook.
"""

import dataclasses
import functools
import json
import logging
import operator
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dynamics import checkpoint as checkpoint_lib
from dynamics import config_schema
from dynamics import data as data_lib
from dynamics import losses
from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import schedules as schedules_lib
from dynamics import step as step_lib
from dynamics import workdir as workdir_lib
from dynamics.types import ApplyFn, Batch, LossFn, PyTree

CONFIG_FILE = 'config.json'


class RunNotFoundError(FileNotFoundError):
  """A workdir without a recorded run, or a step without a checkpoint."""


class Parts(NamedTuple):
  """The static pieces a config builds: what ``train_step`` is partial over."""
  dataset: data_lib.Dataset
  model: nn.Module
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  options: step_lib.StepOptions


def build(config: ml_collections.ConfigDict) -> Parts:
  """Dataset, model, schedule, optimizer and step options of a config."""
  dataset = data_lib.get_dataset(config)
  model = models_lib.build_model(config.model, dataset.info)
  schedule = schedules_lib.from_config(config)
  tx = optim_lib.build_optimizer(parametrization.optimizer_config(config),
                                 schedule)
  options = step_lib.StepOptions.from_config(config, dataset.info.task)
  return Parts(dataset, model, schedule, tx, options)


def init_state(config: ml_collections.ConfigDict, parts: Parts
               ) -> step_lib.TrainState:
  """The state at step 0 (deterministic in ``config.seed``)."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  example = parts.dataset.eval_batch(0)['inputs'][:1]
  # Jitted: op-by-op init of a transformer costs ~100 small compiles.
  init = jax.jit(functools.partial(parts.model.init, train=False))
  variables = init({'params': init_key, 'dropout': init_key},
                   jnp.asarray(example))
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  # A copy, not an alias: the donated state must not hold one buffer twice.
  ema = (jax.tree.map(jnp.copy, params) if config.ema.decay is not None
         else None)
  return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=parts.tx.init(params),
                             model_state=variables, rng=rng, ema_params=ema)


# ---------------------------------------------------------------------------
# config.json


def _tuples(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_record(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The JSON-able dict that ``config.json`` holds."""
  return json.loads(config.to_json_best_effort())


def write_config(config: ml_collections.ConfigDict, workdir: str,
                 parent: Optional[Mapping[str, Any]] = None) -> None:
  """Records ``config`` (complete: every field) as ``workdir/config.json``."""
  record = config_record(config)
  if parent is not None:
    record['parent'] = dict(parent)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def read_record(workdir: str) -> Dict[str, Any]:
  """``workdir/config.json`` as a dict (with the branch ``parent``, if any)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunNotFoundError(f'{workdir} holds no run ({CONFIG_FILE} is missing)')
  with open(path) as f:
    return json.load(f)


def config_from_record(record: Mapping[str, Any],
                       defaults: Optional[ml_collections.ConfigDict] = None
                       ) -> ml_collections.ConfigDict:
  """A locked config from a ``config.json`` record.

  The record is complete on its own. With ``defaults`` (e.g.
  ``configs.base.get_config()``), fields the record lacks -- a run recorded
  before the field existed -- keep their default, and recorded fields that
  are no longer declared are dropped with a warning.
  """
  record = {k: v for k, v in record.items() if k != 'parent'}
  if defaults is None:
    config = ml_collections.ConfigDict(_tuples(record))
  else:
    config = ml_collections.ConfigDict(defaults)
    known = workdir_lib.flatten(config.to_dict())
    values = {k: tuple(v) if isinstance(v, list) else v  # JSON has no tuples.
              for k, v in workdir_lib.flatten(record).items()}
    dropped = sorted(k for k in values if k not in known)
    if dropped:
      logging.warning('config.json: fields no longer declared, ignored: %s',
                      ', '.join(dropped))
    with config.ignore_type():
      for key in values:
        if key in known:
          node = config
          *parents, leaf = key.split('.')
          for part in parents:
            node = node[part]
          node[leaf] = values[key]
  config.lock()
  return config


# ---------------------------------------------------------------------------
# The handle.


@dataclasses.dataclass(eq=False)
class Run:
  """A config, the parts built from it, and (with a workdir) its checkpoints.

  Attributes:
    config: the run's config (for an opened run, the one it recorded).
    workdir: the run directory, or None for a config not trained yet.
    parts: dataset, model, schedule, optimizer and step options, built once.
  """
  config: ml_collections.ConfigDict
  workdir: Optional[str] = None
  parts: Optional[Parts] = None

  def __post_init__(self):
    if self.workdir is not None:
      self.workdir = os.path.abspath(self.workdir)
    if self.parts is None:
      self.parts = build(self.config)

  @classmethod
  def open(cls, workdir: str, *,
           defaults: Optional[ml_collections.ConfigDict] = None) -> 'Run':
    """Opens the run recorded in ``workdir`` (its ``config.json``).

    Args:
      workdir: a directory written by ``train_and_evaluate``.
      defaults: a config declaring every field (``configs.base.get_config()``)
        to fill in fields a run recorded by an older version lacks.

    Raises:
      RunNotFoundError: ``workdir`` holds no recorded run.
    """
    if defaults is None:
      defaults = config_schema.defaults()
    return cls(config_from_record(read_record(workdir), defaults), workdir)

  # -- the parts ------------------------------------------------------------

  @property
  def dataset(self) -> data_lib.Dataset:
    return self.parts.dataset

  @property
  def model(self) -> nn.Module:
    return self.parts.model

  @property
  def schedule(self) -> optax.Schedule:
    return self.parts.schedule

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.parts.tx

  @property
  def options(self) -> step_lib.StepOptions:
    return self.parts.options

  @property
  def parent(self) -> Optional[Dict[str, Any]]:
    """``{'workdir', 'step'}`` of the run this one branched from, if any."""
    if self.workdir is None:
      return None
    try:
      return read_record(self.workdir).get('parent')
    except RunNotFoundError:
      return None

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
    for f, v in wanted.items():
      if f not in out:
        out[f] = v
    return out

  def params(self, step: Optional[int] = None) -> PyTree:
    """The parameters of checkpoint ``step`` only (orbax partial restore)."""
    return self.restore(step, ('params',))['params']

  # -- functions of the parameters -----------------------------------------

  def loss_fn(self, model_state: PyTree = None) -> LossFn:
    """``(params, batch) -> loss`` in inference mode (deterministic)."""
    model_state = {} if model_state is None else model_state

    def fn(params, batch):
      return losses.compute_loss(self.model, params, model_state, batch, None,
                                 self.options, train=False)[0]
    return fn

  def apply_fn(self, model_state: PyTree = None) -> ApplyFn:
    """``(params, inputs) -> outputs`` in inference mode."""
    model_state = {} if model_state is None else model_state

    def fn(params, inputs):
      return self.model.apply({'params': params, **model_state}, inputs,
                              train=False)
    return fn

  def model_fn(self, model_state: PyTree = None
               ) -> Callable[[PyTree, Batch], jax.Array]:
    """``(params, batch) -> outputs``: with `output_loss_fn`,
    ``output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)`` (GGN products)."""
    apply = self.apply_fn(model_state)
    return lambda params, batch: apply(params, batch['inputs'])

  def output_loss_fn(self) -> Callable[[jax.Array, Batch], jax.Array]:
    """``(outputs, batch) -> loss``, the loss as a function of the outputs."""
    options = self.options

    def fn(outputs, batch):
      return losses.loss_from_outputs(outputs, batch['targets'], options)[0]
    return fn

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


def evaluate(params: PyTree, model_state: PyTree, dataset: data_lib.Dataset,
             eval_fn, num_batches: int,
             put: Optional[Callable[[Batch], Batch]] = None) -> Dict[str, float]:
  """Mean eval metrics over the first ``num_batches`` held-out batches.

  ``put`` places a (whole, host) batch on the devices (default: ``jnp``).
  """
  put = put or (lambda b: jax.tree.map(jnp.asarray, b))
  totals: Dict[str, float] = {}
  for i in range(num_batches):
    m = jax.device_get(eval_fn(params, model_state, put(dataset.eval_batch(i))))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / num_batches
  return totals
