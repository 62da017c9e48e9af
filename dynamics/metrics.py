"""In-step measurements and metric writers (JSON lines, TensorBoard).

Norm measurements run inside the jitted train step; the loop fetches them a
step late so that reading metrics never stalls the device.
"""

import json
import math
import os
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from dynamics.histograms import Histogram, TensorBoardHistograms
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


class RunFileError(ValueError):
  """A run file (JSON lines or JSON) damaged where no crash explains it; the
  message names the file and the line."""


def _read_lines(path: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], bool]:
  """``([(line, record), ...], clean)`` of the JSON-lines file at ``path``.

  A crash (of the node, or of an NFS server) can leave the last line partial
  or NUL bytes after the last good line: such a tail is dropped, with a
  one-line warning naming the file, and ``clean`` is False (also when the
  last line lacks its newline). An unreadable line before a good one is not
  a torn tail: `RunFileError` names the file and the line.
  """
  if not os.path.exists(path):
    return [], True
  with open(path, 'rb') as f:
    data = f.read()
  good, first_bad = [], None
  for number, raw in enumerate(data.split(b'\n'), 1):
    if not raw.strip():  # Blank (NUL bytes are not blank).
      continue
    try:
      line = raw.decode('utf-8')
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError('not a JSON object')
    except ValueError:
      first_bad = first_bad or number
      continue
    if first_bad is not None:
      raise RunFileError(
          f'{path}:{first_bad}: not a JSON object, yet good lines follow it '
          '(the file was damaged after it was written); repair or remove '
          'that line')
    good.append((line.strip() + '\n', record))
  if first_bad is not None:
    print(f'WARNING: {path}: dropped an unreadable tail from line {first_bad} '
          'on (a partial write or NUL padding, as a crash can leave)',
          file=sys.stderr, flush=True)
  return good, first_bad is None and data.endswith(b'\n') or not data.strip()


def read_records(path: str) -> List[Dict[str, Any]]:
  """The JSON objects of the JSON-lines file ``path`` in order ([] without
  the file); a torn tail is dropped with a warning (see `_read_lines`).

  Raises:
    RunFileError: an unreadable line before a good one (file and line named).
  """
  return [record for _, record in _read_lines(path)[0]]


class MetricWriter:
  """Appends one JSON object per logged step to the JSON-lines file ``path``.

  On opening, a torn tail left by a crash is dropped (with a warning) and,
  given ``resume_step``, so are the lines of steps after it (written by an
  interrupted run after its last checkpoint), so a resumed run never writes
  a step twice. TensorBoard event files are written to ``tensorboard_dir``
  too when the ``tensorboard`` package is installed; the JSON lines are
  their source of truth, so on opening they are rewritten from the lines
  kept (TensorBoard files cannot be truncated). Metric values that are
  `dynamics.histograms.Histogram` go to ``histograms_path`` (JSON lines,
  truncated and replayed the same way) and to TensorBoard as histograms.
  Only the process that owns the writer writes (``enabled``).
  """

  def __init__(self, path: str, resume_step: Optional[int] = None,
               enabled: bool = True, tensorboard_dir: Optional[str] = None,
               histograms_path: Optional[str] = None):
    self.path = path
    self.enabled = enabled
    self._tb, self._file, self._hist_file, self._tb_hist = None, None, None, None
    if not enabled:
      return
    self._file, kept = self._open(path, resume_step)
    hists = []
    if histograms_path is not None:  # `Histogram` values go there.
      self._hist_file, hists = self._open(histograms_path, resume_step)
    if tensorboard_dir is not None:
      try:
        from tensorboard.summary import Writer  # pylint: disable=g-import-not-at-top
      except ImportError:
        return
      if os.path.isdir(tensorboard_dir):
        shutil.rmtree(tensorboard_dir)
      self._tb = Writer(tensorboard_dir)
      self._tb_hist = TensorBoardHistograms(tensorboard_dir)
      for _, record in kept:
        self._add_scalars(record)
      for _, record in hists:
        self._add_histograms(record['step'], {
            k: Histogram.from_json(v) for k, v in record.items() if k != 'step'})

  @staticmethod
  def _open(path: str, resume_step: Optional[int]):
    """``path`` opened for appending, its lines after ``resume_step`` and a
    torn tail dropped first; with the ``(line, record)`` kept."""
    lines, clean = _read_lines(path)
    kept = [(line, r) for line, r in lines
            if resume_step is None or r.get('step', math.inf) <= resume_step]
    if len(kept) < len(lines) or not clean:
      with open(path + '.tmp', 'w') as f:
        f.writelines(line for line, _ in kept)
      os.replace(path + '.tmp', path)
    return open(path, 'a'), kept

  def _add_histograms(self, step: int, hists: Mapping[str, Histogram]) -> None:
    for k, h in hists.items():
      self._tb_hist.add(k, h, step)

  def _add_scalars(self, record: Mapping[str, Any]) -> None:
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step=record['step'])

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    hists = {k: v for k, v in metrics.items() if isinstance(v, Histogram)}
    record = {'step': int(step), **{k: _to_python(v) for k, v in metrics.items()
                                    if k not in hists}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      self._add_scalars(record)
    if hists and self._hist_file is not None:
      self._hist_file.write(json.dumps({'step': int(step), **{
          k: h.to_json() for k, h in hists.items()}}) + '\n')
      self._hist_file.flush()
      if self._tb_hist is not None:
        self._add_histograms(step, hists)

  def write_nonempty(self, step: int, metrics: Mapping[str, float]) -> None:
    if metrics:
      self.write(step, metrics)

  def close(self) -> None:
    for name in ('_file', '_hist_file', '_tb', '_tb_hist'):
      if getattr(self, name) is not None:
        getattr(self, name).close()
        setattr(self, name, None)

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _to_python(value):
  if hasattr(value, 'item'):
    return value.item()
  return value
