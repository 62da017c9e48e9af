"""In-step measurements and metric writers (JSONL, TensorBoard).

Norm measurements run inside the jitted train step; the loop fetches them a
step late so that reading metrics never stalls the device.
"""

import json
import math
import os
import shutil
from typing import Any, Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from dynamics.types import PyTree, param_name


def global_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree)


def per_layer_norms(prefix: str, tree: PyTree) -> Dict[str, jax.Array]:
  """``{'<prefix>/<param path>': ||leaf||}`` for every leaf."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f'{prefix}/{param_name(p)}': jnp.linalg.norm(jnp.ravel(x).astype(jnp.float32))
          for p, x in flat}


def step_norms(params: PyTree, grads: PyTree, updates: PyTree,
               per_layer: bool) -> Dict[str, jax.Array]:
  """Global (and optionally per-parameter) norms of weights, grads, updates."""
  metrics = {
      'grad_norm': global_norm(grads),
      'param_norm': global_norm(params),
      'update_norm': global_norm(updates),
  }
  if per_layer:
    for name, tree in (('param_norm', params), ('grad_norm', grads),
                       ('update_norm', updates)):
      metrics.update(per_layer_norms(f'layers/{name}', tree))
  return metrics


def first_nonfinite(metrics: Mapping[str, Any]) -> Optional[str]:
  """Name of the first metric that is NaN or infinite, if any."""
  for name, value in metrics.items():
    if isinstance(value, (int, float)) and not math.isfinite(value):
      return name
  return None


class NonFiniteError(FloatingPointError):
  """Training produced a NaN or Inf; the message names the step and metric."""


class StepMetrics:
  """The train step's metrics on their way from the device to the log.

  ``push`` keeps each step's (device) metrics without waiting for them;
  ``pop(upto)`` fetches those up to ``upto`` in one transfer, checks them for
  NaN/Inf (every step, logged or not) and returns the lines to log: every
  ``log_every`` steps and the last step. Popping one step late lets the
  device run ahead of the host.
  """

  def __init__(self, log_every: int, final_step: int,
               stop_on_nonfinite: bool = True):
    self.log_every, self.final_step = log_every, final_step
    self.stop_on_nonfinite = stop_on_nonfinite
    self.last: Dict[str, float] = {}  # The latest logged values (progress bar).
    self._pending = []

  def push(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def pop(self, upto: int) -> Dict[int, Dict[str, float]]:
    """``{step: metrics}`` to log among the pushed steps ``<= upto``.

    Raises:
      NonFiniteError: a metric of a popped step is NaN or infinite (with
        ``stop_on_nonfinite``); the message names the step and the metric.
    """
    ready = [(s, m) for s, m in self._pending if s <= upto]
    self._pending = [(s, m) for s, m in self._pending if s > upto]
    lines = {}
    for s, m in jax.device_get(ready):
      m = {f'train_{k}' if k in ('loss', 'accuracy') else k: float(v)
           for k, v in m.items()}
      check_finite(m, s, self.stop_on_nonfinite)
      if s % self.log_every == 0 or s == self.final_step:
        lines[s] = m
        self.last.update(m)
    return lines


def check_finite(metrics: Mapping[str, Any], step: int, stop: bool = True
                 ) -> None:
  """Raises `NonFiniteError` naming ``step`` and the first non-finite metric."""
  bad = first_nonfinite(metrics)
  if bad is not None and stop:
    raise NonFiniteError(f'non-finite {bad}={metrics[bad]} at step {step}')


class MetricWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl``.

  On opening, lines of steps after ``resume_step`` (written by an interrupted
  run after its last checkpoint) are dropped, so a resumed run never writes a
  step twice. TensorBoard event files are written too when the ``tensorboard``
  package is installed; ``metrics.jsonl`` is their source of truth, so on a
  resume they are rewritten from the lines kept (TensorBoard files cannot be
  truncated). Only the process that owns the writer writes.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True,
               tensorboard: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled
    self._tb, self._file = None, None
    if not enabled:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self._file = open(self.path, 'a')
    if tensorboard:
      tb_dir = os.path.join(workdir, 'tensorboard')
      try:
        from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
      except ImportError:
        return
      if os.path.isdir(tb_dir):
        shutil.rmtree(tb_dir)
      self._tb = Writer(tb_dir)
      for line in kept:
        self._add_scalars(json.loads(line))

  def _add_scalars(self, record: Mapping[str, Any]) -> None:
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step=record['step'])

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      self._add_scalars(record)

  def write_nonempty(self, step: int, metrics: Mapping[str, float]) -> None:
    if metrics:
      self.write(step, metrics)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _to_python(value):
  if hasattr(value, 'item'):
    return value.item()
  return value


def read_metrics(workdir: str) -> Iterable[Dict[str, Any]]:
  """All records of ``workdir/metrics.jsonl`` in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
