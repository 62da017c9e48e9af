"""Train state, the pure train/eval steps, and the training loop.

Data flows one way: ``config -> train_and_evaluate -> (model, data, optimizer,
schedule) -> train_step -> checkpoints + metrics``. ``train_step`` is a
module-level pure function; the loop jits it once with the state donated, and
tests, notebooks and analyses call the very same function.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dynamics import checkpoint as checkpoint_lib
from dynamics import config_lib
from dynamics import data as data_lib
from dynamics import loop_utils
from dynamics import losses
from dynamics import metrics as metrics_lib
from dynamics import models as models_lib
from dynamics import optim as optim_lib
from dynamics import parametrization
from dynamics import schedules as schedules_lib
from dynamics import sharding as sharding_lib

PyTree = Any
Batch = Dict[str, Any]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree.

  Attributes:
    step: number of completed updates.
    params: the model parameters (``variables['params']``).
    opt_state: the optax state.
    model_state: the model's other variable collections (e.g. BatchNorm's
      ``batch_stats``); ``{}`` for stateless models.
    rng: base key; step ``t`` uses ``fold_in(rng, t)``, so any step replays.
    ema_params: exponential moving average of ``params`` (None when off).
  """
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  model_state: PyTree
  rng: jax.Array
  ema_params: Optional[PyTree] = None


StepOptions = losses.StepOptions


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               options: StepOptions) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer update. Pure: the same inputs give the same bits.

  Args:
    state: the state after ``state.step`` updates.
    batch: ``{'inputs', 'targets'}`` arrays.
    model, tx, schedule, options: static parts (bind them with
      ``functools.partial`` and jit once; see ``make_train_step``).

  Returns:
    ``(new_state, metrics)``: metrics are scalars of this update: the loss
    and accuracy of ``batch`` before the update, the learning rate used, and
    global gradient / parameter / update norms (per parameter as well with
    ``options.log_per_layer``).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, b):
    return losses.compute_loss(model, params, state.model_state, b, rng, options,
                        train=True)

  if options.sam_rho is None:
    (_, (model_state, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, batch)
  else:
    sam_gradient = optim_lib.sam_gradient
    mask = optim_lib.norm_mask if options.sam_mask == 'norm' else None
    (_, (model_state, metrics)), grads = sam_gradient(
        loss_fn, state.params, batch, rho=options.sam_rho,
        adaptive=options.sam_adaptive, eta=options.sam_eta, mask=mask,
        num_microbatches=options.sam_microbatches, has_aux=True)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics)
  metrics['learning_rate'] = jnp.asarray(schedule(state.step), jnp.float32)

  def measure():
    m = metrics_lib.step_norms(state.params, grads, updates,
                               options.log_per_layer)
    if options.log_per_layer:
      m.update(parametrization.rotation_metrics(
          state.params, params, metrics['learning_rate']))
    return m

  metrics.update(_on_logged_steps(measure, state.step, options))
  ema_params = state.ema_params
  if options.ema_decay is not None:
    ema_params = optax.incremental_update(params, ema_params,
                                          1.0 - options.ema_decay)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, model_state=model_state,
                            ema_params=ema_params)
  return new_state, metrics


def _on_logged_steps(measure: Callable[[], Dict[str, jax.Array]],
                     step: jax.Array, options: StepOptions
                     ) -> Dict[str, jax.Array]:
  """``measure()`` on the steps the loop logs, zeros elsewhere.

  On a small model the norms cost as much as the update itself; the loop
  writes them only every ``log_every`` steps, so the others skip the work
  (``lax.cond`` runs one branch). The update is computed outside, so its
  bits do not depend on this.
  """
  if options.log_every == 1:
    return measure()
  done = step + 1
  logged = done % options.log_every == 0
  if options.num_steps is not None:
    logged = logged | (done == options.num_steps)
  zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                               jax.eval_shape(measure))
  return jax.lax.cond(logged, measure, zeros)


def eval_step(params: PyTree, model_state: PyTree, batch: Batch, *,
              model: nn.Module, options: StepOptions) -> Dict[str, jax.Array]:
  """Loss (and accuracy) of ``batch`` in inference mode."""
  _, (_, metrics) = losses.compute_loss(model, params, model_state, batch, None,
                                 options, train=False)
  return metrics


class Parts(NamedTuple):
  """The static pieces a config builds: what ``train_step`` is partial over."""
  dataset: data_lib.Dataset
  model: nn.Module
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  options: StepOptions


def build(config: ml_collections.ConfigDict) -> Parts:
  """Dataset, model, schedule, optimizer and step options of a config."""
  dataset = data_lib.get_dataset(config)
  model = models_lib.build_model(config.model, dataset.info)
  schedule = schedules_lib.from_config(config)
  tx = optim_lib.build_optimizer(parametrization.optimizer_config(config),
                                 schedule)
  options = StepOptions.from_config(config, dataset.info.task)
  return Parts(dataset, model, schedule, tx, options)


def init_state(config: ml_collections.ConfigDict, parts: Parts) -> TrainState:
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
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=parts.tx.init(params), model_state=variables,
                    rng=rng, ema_params=ema)


def make_train_step(parts: Parts,
                    shardings: Optional[sharding_lib.TrainShardings] = None
                    ) -> Callable[[TrainState, Batch],
                                  Tuple[TrainState, Dict[str, jax.Array]]]:
  """``train_step`` bound to a config's static parts, jitted, state donated.

  With ``shardings`` (several devices) the state and batch are laid out by
  ``jax.jit`` in/out shardings: the batch split over the mesh, the state
  replicated or FSDP-sharded, the metrics replicated.
  """
  step = functools.partial(train_step, model=parts.model, tx=parts.tx,
                           schedule=parts.schedule, options=parts.options)
  if shardings is not None:
    return sharding_lib.jit_sharded(step, shardings)
  return jax.jit(step, donate_argnums=0)


def make_eval_step(parts: Parts,
                   shardings: Optional[sharding_lib.TrainShardings] = None):
  fn = functools.partial(eval_step, model=parts.model, options=parts.options)
  if shardings is not None:  # Metrics replicated: every process can read them.
    return jax.jit(fn, out_shardings=shardings.replicated)
  return jax.jit(fn)


@dataclasses.dataclass
class Context:
  """What training-time analysis callbacks may use (see ``train_and_evaluate``)."""
  config: ml_collections.ConfigDict
  model: nn.Module
  dataset: data_lib.Dataset
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  options: StepOptions

  def loss_fn(self, model_state: PyTree) -> Callable[[PyTree, Batch], jax.Array]:
    """``(params, batch) -> loss`` in inference mode (deterministic)."""
    def fn(params, batch):
      return losses.compute_loss(self.model, params, model_state, batch, None,
                          self.options, train=False)[0]
    return fn

  def model_fn(self, model_state: PyTree) -> Callable[[PyTree, Batch], jax.Array]:
    """``(params, batch) -> outputs`` in inference mode: with `output_loss_fn`,
    ``output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)`` (for GGN products)."""
    apply = self.apply_fn(model_state)
    return lambda params, batch: apply(params, batch['inputs'])

  def output_loss_fn(self) -> Callable[[jax.Array, Batch], jax.Array]:
    """``(outputs, batch) -> loss``, the loss as a function of the outputs."""
    def fn(outputs, batch):
      return losses.loss_from_outputs(outputs, batch['targets'], self.options)[0]
    return fn

  def apply_fn(self, model_state: PyTree) -> Callable[[PyTree, Any], jax.Array]:
    """``(params, inputs) -> outputs`` in inference mode."""
    def fn(params, inputs):
      return self.model.apply({'params': params, **model_state}, inputs,
                              train=False)
    return fn

  def probe_batches(self, n: int) -> List[Batch]:
    """``n`` fixed held-out batches: the same ones at every call."""
    return [self.dataset.eval_batch(10_000 + i) for i in range(n)]


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or Inf; the message names the step and metric."""


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


def _resolve_branch(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A branch runs ``from_step + decay_steps`` steps in total."""
  if config.branch.from_step is None:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.num_steps = int(config.branch.from_step + config.branch.decay_steps)
  return config


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  record = json.loads(config.to_json_best_effort())
  if config.branch.from_workdir is not None:
    record['parent'] = {'workdir': os.path.abspath(config.branch.from_workdir),
                        'step': config.branch.from_step}
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)


def _restore_branch_parent(config, abstract) -> Tuple[TrainState, Dict[str, int]]:
  parent, step = config.branch.from_workdir, config.branch.from_step
  steps = checkpoint_lib.available_steps(parent)
  if step not in steps:
    raise config_lib.ConfigError(
        f'config.branch.from_step={step}: no checkpoint at that step in '
        f'{parent}; available steps: {steps}')
  ckpt = checkpoint_lib.Checkpointer(parent, async_save=False)
  try:
    return ckpt.restore(step, abstract)
  finally:
    ckpt.close()


def _to_device(batch: Batch) -> Batch:
  return jax.tree.map(jnp.asarray, batch)


def evaluate(params: PyTree, model_state: PyTree, dataset: data_lib.Dataset,
             eval_fn, num_batches: int, put: Callable[[Batch], Batch] = None
             ) -> Dict[str, float]:
  """Mean eval metrics over the first ``num_batches`` held-out batches.

  ``put`` places a (whole, host) batch on the devices (default: ``jnp``).
  """
  put = put or _to_device
  totals: Dict[str, float] = {}
  for i in range(num_batches):
    m = jax.device_get(eval_fn(params, model_state, put(dataset.eval_batch(i))))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / num_batches
  return totals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       callbacks: Sequence[Any] = ()) -> TrainState:
  """Trains ``config`` into ``workdir``, resuming from its latest checkpoint.

  Writes ``workdir/config.json``, ``workdir/metrics.jsonl`` (one line per
  logged step; train metrics at ``log_every``, ``eval_*`` at ``eval_every``
  and at the end, callback results at their own period) and orbax
  checkpoints under ``workdir/checkpoints``.

  Args:
    config: a config declaring the fields of ``configs/base.py``.
    workdir: output directory; an existing run there is resumed.
    callbacks: objects with an ``every`` attribute, called as
      ``cb(state, ctx) -> dict of scalars`` whenever ``state.step % cb.every
      == 0`` (step 0 included); ``ctx`` is a ``Context``.

  Returns:
    The final ``TrainState``.

  Raises:
    ConfigError: an unknown field or invalid value (before compiling).
    NonFiniteError: a NaN/Inf metric; the last good checkpoint is kept.
  """
  # Before anything touches a device: multi-host runs must join first.
  sharding_lib.maybe_initialize_distributed(config)
  config_lib.validate(config, device_count=jax.device_count())
  config = _resolve_branch(config)
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  parts = build(config)
  state = init_state(config, parts)
  shardings = None  # One device: plain jit, exactly as before.
  if jax.device_count() > 1:
    shardings = sharding_lib.TrainShardings.create(
        sharding_lib.make_mesh(config.mesh), state, config.mesh.fsdp_min_size)
    # Placed before restoring, so orbax restores straight into the layout.
    state = shardings.put_state(state)
  put_batch = shardings.put_batch if shardings else _to_device
  put_eval = shardings.put_full_batch if shardings else _to_device
  ckpt = checkpoint_lib.Checkpointer(
      workdir, config.checkpoint.max_to_keep, keep_steps(config),
      config.checkpoint.async_save)
  data_iter = data_lib.DataIterator(parts.dataset,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
  restored = ckpt.restore_latest(state)
  resumed_from = None
  if restored is not None:
    resumed_from, state, data_state = restored
    data_iter.restore(data_state)
  elif config.branch.from_workdir is not None:
    state, data_state = _restore_branch_parent(config, state)
    data_iter.restore(data_state)
  if is_main and resumed_from is None:
    _write_config(config, workdir)
  start_step = int(state.step)
  if is_main:
    loop_utils.announce(config, parts, state, workdir, resumed_from)
  # A fresh start rewrites step 0 on: drop any lines of an earlier attempt
  # that died before its first checkpoint.
  writer = metrics_lib.MetricWriter(
      workdir, resume_step=start_step if resumed_from is not None else -1,
      enabled=is_main)
  step_fn = make_train_step(parts, shardings)
  eval_fn = make_eval_step(parts, shardings)
  ctx = Context(config, parts.model, parts.dataset, parts.schedule, parts.tx,
                parts.options)
  final = config.num_steps

  def host_metrics(step: int, state: TrainState) -> Dict[str, float]:
    """Eval and callback results due at ``step`` (after ``step`` updates)."""
    out: Dict[str, float] = {}
    if step % config.eval_every == 0 or step == final:
      ev = evaluate(state.params, state.model_state, parts.dataset, eval_fn,
                    config.eval_batches, put_eval)
      out.update({f'eval_{k}': v for k, v in ev.items()})
      if state.ema_params is not None:
        ev = evaluate(state.ema_params, state.model_state, parts.dataset,
                      eval_fn, config.eval_batches, put_eval)
        out.update({f'eval_{k}_ema': v for k, v in ev.items()})
    for cb in callbacks:
      if step % cb.every == 0:
        out.update({k: float(v) for k, v in cb(state, ctx).items()})
    return out

  pending: List[Tuple[int, Dict[str, jax.Array]]] = []
  last_train: Dict[str, float] = {}

  def flush(upto: int) -> Dict[int, Dict[str, float]]:
    """Fetches step metrics up to ``upto``; checks them; returns logged lines."""
    nonlocal pending
    ready = [(s, m) for s, m in pending if s <= upto]
    pending = [(s, m) for s, m in pending if s > upto]
    lines = {}
    for s, m in jax.device_get(ready):
      m = {f'train_{k}' if k in ('loss', 'accuracy') else k: float(v)
           for k, v in m.items()}
      bad = metrics_lib.first_nonfinite(m)
      if bad is not None and config.stop_on_nonfinite:
        ckpt.wait()
        good = ckpt.all_steps()
        raise NonFiniteError(
            f'non-finite {bad}={m[bad]} at step {s}; training stopped. The '
            f'last good checkpoint (step {good[-1] if good else None}) is '
            'untouched.')
      if s % config.log_every == 0 or s == final:
        lines[s] = m
        last_train.update(m)
    return lines

  keep = set(keep_steps(config))
  if start_step == 0:
    m0 = host_metrics(0, state)
    if m0:
      writer.write(0, m0)
    if 0 in keep:  # The initialization, for NTK-drift and Jacobian studies.
      ckpt.save(0, state, data_iter.state())
  progress = loop_utils.progress_bar(config, start_step, final)
  stop = loop_utils.SigtermFlag()
  stall: List[Tuple[int, float]] = []
  t_last, examples = time.time(), loop_utils.examples_per_step(config)
  try:
    for step in range(start_step + 1, final + 1):
      state, metrics = step_fn(state, put_batch(next(data_iter)))
      pending.append((step, metrics))
      preempted = stop.reached(step)
      save = (step % config.checkpoint.every_steps == 0 or step in keep
              or preempted)
      if save or step % config.eval_every == 0 or any(
          step % cb.every == 0 for cb in callbacks):
        lines = flush(step)  # Synchronous: checked before anything is saved.
        extra = host_metrics(step, state)
        if extra:
          lines.setdefault(step, {}).update(extra)
      else:
        lines = flush(step - 1)  # One step late: the device never waits.
      for s in sorted(lines):
        writer.write(s, lines[s])
      if save:
        t_save = time.perf_counter()
        ckpt.save(step, state, data_iter.state())
        # How long the loop waited for the save (async: the device-to-host
        # copy only; the write happens in the background).
        stall.append((step, time.perf_counter() - t_save))
      if progress is not None:
        progress.update(1)
        if step % config.log_every == 0:
          now = time.time()
          progress.set_postfix(
              loss=f"{last_train.get('train_loss', float('nan')):.3f}",
              lr=f"{last_train.get('learning_rate', 0.0):.2e}",
              rate=f'{examples * config.log_every / max(now - t_last, 1e-9):.4g}/s',
              refresh=False)
          t_last = now
      if preempted and step != final:
        ckpt.close()
        raise Preempted(f'SIGTERM: saved step {step} in {workdir}; re-run the '
                        'same command to resume.')
  finally:
    stop.restore()
    if is_main and stall:
      loop_utils.write_stall(workdir, stall, config.checkpoint.async_save)
    if progress is not None:
      progress.close()
    writer.close()
  ckpt.close()
  return state
