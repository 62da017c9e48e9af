r"""Training throughput: tokens per second and model-FLOPs utilization (MFU).

A decoder-only transformer costs, per trained token,

.. math:: C = 6 N + 12\, L\, T\, d

FLOPs (forward and backward; Kaplan et al., 2020, Appendix; Chowdhery et al.,
"PaLM", 2022, Appendix B): ``6 N`` for the matmuls with the ``N``
parameters that multiply activations, ``12 L T d`` for the attention scores
and their mix over a context of ``T`` (``L`` layers of width ``d``; no
discount for the causal mask). ``N`` here is every parameter except the
input token and position embedding tables (lookups, not matmuls), with the
output projection counted once whether it is tied to the input embedding or
not. SAM's second forward-backward pass doubles ``C``; rematerialization's
recomputation is not counted (that would be hardware-FLOPs utilization).

``MFU = tokens_per_s * C / (peak * devices)`` with ``peak`` the device's
dense bf16 peak from `PEAK_FLOPS` (matched against ``device_kind``) or the
``throughput.peak_flops`` config field, which overrides it. CPUs have no
entry: their MFU is reported only against a peak given in the config.
"""

import time
from typing import Any, Dict, Optional

import jax

from dynamics import data as data_lib
from dynamics.types import PyTree, param_names

# Dense bf16 peak FLOP/s per device (vendor figures, without sparsity),
# matched in order as substrings of ``jax.Device.device_kind``.
PEAK_FLOPS = (
    ('H100', 989e12),
    ('H200', 989e12),
    ('A100', 312e12),
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),   # v5e
    ('TPU v5e', 197e12),
    ('TPU v5p', 459e12),
    ('TPU v6 lite', 918e12),   # v6e (Trillium)
)
KEYS = ('tokens_per_s', 'examples_per_s', 'mfu')  # Wall-clock metric names.


def peak_flops(device_kind: str, override: Optional[float] = None
               ) -> Optional[float]:
  """The peak FLOP/s of one device: ``override``, else `PEAK_FLOPS`, else None.

  Example:
    >>> peak_flops('NVIDIA H100 80GB HBM3'), peak_flops('cpu')
    (989000000000000.0, None)
    >>> peak_flops('cpu', override=1.2e11)
    120000000000.0
  """
  if override is not None:
    return float(override)
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def matmul_params(params: PyTree, tied_embeddings: bool = True) -> int:
  """``N`` of the module docstring: parameters that multiply activations.

  Example:
    >>> import numpy as np
    >>> p = {'embed': {'embedding': np.zeros((10, 4))},
    ...      'pos_embed': np.zeros((8, 4)), 'block_0': {'w': np.zeros((4, 4))}}
    >>> matmul_params(p, tied_embeddings=True)   # 16 + the 40 of the head
    56
  """
  total = 0
  for name, leaf in zip(param_names(params), jax.tree.leaves(params)):
    if name == 'pos_embed' or (name == 'embed/embedding'
                               and not tied_embeddings):
      continue
    total += int(leaf.size)
  return total


def flops_per_token(params: PyTree, config: Any) -> Optional[float]:
  """``C`` of the module docstring for a transformer config, else None."""
  m = config.model
  if m.name != 'transformer':
    return None
  n = matmul_params(params, m.tie_embeddings)
  flops = 6.0 * n + 12.0 * m.num_layers * config.data.seq_len * m.d_model
  if config.optimizer.sam.rho is not None:
    flops *= 2.0
  return flops


class Meter:
  """Tokens (or examples) per second and MFU over the steps between logs.

  The loop calls ``mark(step)`` once per step after the host has synced on
  the previous step's metrics; ``rates(step)`` gives the rates over the
  steps since the previous logged step. The first interval starts after the
  second step of the run (or of the resume), so neither compilation nor the
  first execution (allocations, transfers) is counted.
  """

  def __init__(self, config: Any, params: PyTree = None,
               device_kind: Optional[str] = None, num_devices: int = 1):
    language = config.data.name in data_lib.LANGUAGE_DATASETS
    self.key = 'tokens_per_s' if language else 'examples_per_s'
    self.per_step = config.data.batch_size * (config.data.seq_len
                                              if language else 1)
    self.log_every, self.final = config.log_every, config.num_steps
    self.flops = (flops_per_token(params, config)
                  if language and params is not None else None)
    kind = device_kind if device_kind is not None else (
        jax.devices()[0].device_kind)
    peak = peak_flops(kind, config.throughput.peak_flops)
    self.peak = None if peak is None else peak * num_devices
    self._marks: Dict[int, float] = {}
    self._last_logged: Optional[int] = None
    self._seen = 0

  def mark(self, step: int, now: Optional[float] = None) -> None:
    self._marks[step] = time.perf_counter() if now is None else now
    self._seen += 1
    if self._seen == 2:  # The second mark opens the first interval.
      self._last_logged = step

  def rates(self, step: int) -> Dict[str, float]:
    """``{tokens_per_s[, mfu]}`` for a logged ``step``, else ``{}``."""
    if step % self.log_every and step != self.final:
      return {}
    start = self._last_logged
    if start is None or step <= start or step not in self._marks:
      return {}
    seconds = self._marks[step] - self._marks[start]
    self._marks = {s: t for s, t in self._marks.items() if s >= step}
    self._last_logged = step
    rate = self.per_step * (step - start) / max(seconds, 1e-9)
    out = {self.key: rate}
    if self.flops is not None and self.peak is not None:
      out['mfu'] = rate * self.flops / self.peak
    return out
