r"""The GGN of a language model through its softmax, by vocabulary chunks.

The plain Gauss-Newton product (`registry.ggn_product`) differentiates the
model's logits: its ``jvp`` and ``vjp`` hold ``[batch x seq x vocab]``
arrays -- the logits, their tangent, the softmax, the output Hessian's
product and its cotangent -- 5 GB each at GPT-2's vocabulary and 16K
tokens in float32. Here the model is split at its head: the product is
taken through the hidden states ``h`` and the readout ``(W, b)`` (a ``jvp``
and a ``vjp`` of :math:`\theta \mapsto (h, W, b)`), and the softmax's
:math:`J^\top H J` of the readout by vocabulary chunks
(`dynamics.chunked_loss.chunked_softmax_ggn`), so no ``tokens x vocab``
array exists, only ``tokens x chunk``. The matrix is the same: the logits
:math:`s(hW + b)` are the composition.

`output_loss` gives a run's ``output_loss_fn`` for the GGN: a `ChunkedHead`
(still the loss of the logits when called) where the run's loss allows it,
which `registry.ggn_product` recognizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from dynamics import chunked_loss
from dynamics.types import Batch, PyTree

# Vocabularies from this size on are chunked by default (`output_loss`).
LARGE_VOCAB = 16_384
# The chunk then (`chunked_loss.balanced_chunk` evens it out).
DEFAULT_CHUNK = 8_192


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkedHead:
  """A transformer's cross-entropy as a function of its logits, which also
  knows where the logits come from, for the chunked GGN.

  Attributes:
    loss_fn: ``(logits, batch) -> loss`` (the run's ``output_loss_fn``;
      calling the head calls it).
    hidden_fn: ``(params, batch) -> h``, the ``(N, d)`` hidden states the
      head reads.
    readout: ``params -> (W (d, V), b (V,) or None, scale)``.
    chunk: vocabulary columns per chunk.
  """
  loss_fn: Callable[[jax.Array, Batch], jax.Array]
  hidden_fn: Callable[[PyTree, Batch], jax.Array]
  readout: Callable[[PyTree], Any]
  chunk: int

  def __call__(self, outputs: jax.Array, batch: Batch) -> jax.Array:
    return self.loss_fn(outputs, batch)


def ggn_product(params: PyTree, batch: Batch, v: PyTree,
                head: ChunkedHead) -> PyTree:
  r""":math:`J^\top \nabla^2_x L\, J v` of the mean cross-entropy of
  ``batch``, by vocabulary chunks (module doc); equal to
  `registry.ggn_product` with the logits as outputs, to round-off.

  Positions weigh ``1/N`` (the mean over every target position; a batch's
  ``mask`` weighs them as the training loss does).
  """
  def split(p):
    w, b, _ = head.readout(p)
    return head.hidden_fn(p, batch), w, b

  (h, w, b), (dh, dw, db) = jax.jvp(split, (params,), (v,))
  scale = head.readout(params)[2]
  mask = batch.get('mask') if isinstance(batch, dict) else None
  if mask is None:
    weights = jnp.full(h.shape[:1], 1.0 / h.shape[0], jnp.float32)
  else:
    m = mask.reshape(-1).astype(jnp.float32)
    weights = m / jnp.maximum(jnp.sum(m), 1.0)
  g_h, g_w, g_b = chunked_loss.chunked_softmax_ggn(
      h, w, b, dh, dw, db, weights, scale=scale, chunk=head.chunk)
  cotangent = (g_h.astype(h.dtype), g_w.astype(w.dtype),
               None if b is None else g_b.astype(b.dtype))
  return jax.vjp(split, params)[1](cotangent)[0]


def _unsupported(run) -> Optional[str]:
  """Why the run's loss cannot go through the chunked GGN (None: it can)."""
  options, config = run.options, run.config
  if not hasattr(run.parts.model, 'readout'):
    return f'model.name={config.model.name} has no separate readout'
  if options.loss != 'cross_entropy':
    return f'loss.name={options.loss} is not a cross-entropy'
  if options.softmax != 'softmax':
    return f'model.softmax={options.softmax}: the softmax only'
  if options.z_loss:
    return f'loss.z_loss={options.z_loss}: without a z-loss only'
  if config.model.quantization is not None:
    return 'model.quantization: the head is not fake-quantized here'
  return None


def output_loss(run, model_state: PyTree = None,
                vocab_chunk: Optional[int] = None):
  """The ``output_loss_fn`` of ``run`` for the GGN: a `ChunkedHead` when
  the softmax goes by vocabulary chunks, else the run's own.

  Args:
    run: a `dynamics.runs.Run`.
    model_state: the checkpoint's model state.
    vocab_chunk: columns per chunk; 0: never chunked; None: the run's
      ``loss.vocab_chunk``, else `DEFAULT_CHUNK` for vocabularies of
      `LARGE_VOCAB` or more (where the run's loss allows; else plain).

  Raises:
    ValueError: a ``vocab_chunk > 0`` the run's loss cannot take (why).
  """
  plain = run.output_loss_fn()
  if vocab_chunk == 0:
    return plain
  why = _unsupported(run)
  if vocab_chunk is not None and why is not None:
    raise ValueError(f'vocab_chunk={vocab_chunk}: {why}')
  if why is not None:
    return plain
  if vocab_chunk is None:
    vocab = run.abstract_state.params['embed']['embedding'].shape[0]
    vocab_chunk = run.options.vocab_chunk or (
        DEFAULT_CHUNK if vocab >= LARGE_VOCAB else None)
    if vocab_chunk is None:
      return plain
  model, state = run.parts.model, model_state or {}

  def hidden_fn(params, batch):
    h = model.apply({'params': params, **state}, batch['inputs'],
                    train=False, return_hidden=True)
    return h.reshape(-1, h.shape[-1])

  def readout(params):
    w, b, scale, dtype = model.readout(params)
    return w.astype(dtype), None if b is None else b.astype(dtype), scale

  return ChunkedHead(plain, hidden_fn, readout, int(vocab_chunk))
