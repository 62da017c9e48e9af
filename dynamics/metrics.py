"""In-step measurements and metric writers (JSONL, TensorBoard).

Norm measurements run inside the jitted train step; the loop fetches them a
step late so that reading metrics never stalls the device.
"""

import json
import math
import os
from typing import Any, Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def global_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree)


def path_name(path) -> str:
  """'block_0/attn/qkv/kernel' from a jax key path."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def per_layer_norms(prefix: str, tree: PyTree) -> Dict[str, jax.Array]:
  """``{'<prefix>/<param path>': ||leaf||}`` for every leaf."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f'{prefix}/{path_name(p)}': jnp.linalg.norm(jnp.ravel(x).astype(jnp.float32))
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


class MetricWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl``.

  On opening, lines of steps after ``resume_step`` (written by an interrupted
  run after its last checkpoint) are dropped, so a resumed run never writes a
  step twice. TensorBoard event files are written too when the ``tensorboard``
  package is installed. Only the process that owns the writer writes.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True,
               tensorboard: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self._file = open(self.path, 'a')
    if tensorboard:
      try:
        from tensorboard.summary import Writer
        self._tb = Writer(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step=step)

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()


def _to_python(value):
  if hasattr(value, 'item'):
    return value.item()
  return value


def read_metrics(workdir: str) -> Iterable[Dict[str, Any]]:
  """All records of ``workdir/metrics.jsonl`` in order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
