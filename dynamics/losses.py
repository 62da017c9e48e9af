"""Losses of the train and eval steps, and the step's static options.

Output nonlinearities (``config.model.softmax``):

* ``softmax``: ``p_i = exp(x_i) / Z`` with ``log Z = logsumexp(x)``.
* ``stablemax``: ``p_i = s(x_i) / sum_j s(x_j)`` with ``s(x) = x + 1`` for
  ``x >= 0`` and ``1 / (1 - x)`` below: the softmax replacement of Prieto et
  al., "Grokking at the Edge of Numerical Stability", 2025
  (https://arxiv.org/abs/2501.04697), which grows only linearly, so a
  confident model does not drive the logits towards float overflow
  ("Softmax Collapse"). Here ``log Z = log sum_j s(x_j)``.

The auxiliary z-loss ``z_loss * mean(log(Z)^2)`` (Chowdhery et al., PaLM,
2022; Wortsman et al., "Small-scale proxies for large-scale Transformer
training instabilities", 2023) keeps ``log Z`` near 0 to stop output-logit
divergence.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamics import chunked_loss
from dynamics import errors
from dynamics.types import Batch, PyTree, param_name

# ``options`` below is a `dynamics.step.StepOptions` (or anything with its
# ``loss``, ``z_loss``, ``softmax`` and ``log_per_layer`` fields).
Options = Any


def resolve_loss_name(name: str, task: str) -> str:
  """``loss.name``, or for 'auto' the task's own: MSE for regression, else
  cross-entropy."""
  if name != 'auto':
    return name
  return 'mse' if task == 'regression' else 'cross_entropy'


def stablemax_s(x: jax.Array) -> jax.Array:
  """StableMax's ``s(x)``: ``x + 1`` for ``x >= 0``, ``1 / (1 - x)`` below."""
  # The unused branch is evaluated at a safe point so its gradient is finite.
  return jnp.where(x >= 0, x + 1.0, 1.0 / (1.0 - jnp.minimum(x, 0.0)))


def _stablemax_log_normalizer(logits: jax.Array) -> Tuple[jax.Array, jax.Array]:
  s = stablemax_s(logits.astype(jnp.float32))
  return jnp.log(jnp.sum(s, axis=-1)), jnp.log(s)


# ``config.model.softmax``: ``logit -> log p_unnormalized`` elementwise, the
# ``phi`` of the chunked cross-entropy (`dynamics.chunked_loss`).
PHIS = {
    'softmax': chunked_loss.identity,
    'stablemax': lambda x: jnp.log(stablemax_s(x)),
}

# ``config.model.softmax``: ``logits -> (log Z, log p_unnormalized)``.
SOFTMAXES = {
    'softmax': lambda logits: (jax.nn.logsumexp(logits, axis=-1), logits),
    'stablemax': _stablemax_log_normalizer,
}


def log_normalizer(logits: jax.Array, softmax: str = 'softmax'
                   ) -> Tuple[jax.Array, jax.Array]:
  """``(log Z, log p_unnormalized)``: the cross-entropy of class ``y`` is
  ``log Z - log_unnorm[y]`` (``log_unnorm = logits`` for the softmax)."""
  if softmax not in SOFTMAXES:
    raise ValueError(f'model.softmax must be one of {tuple(SOFTMAXES)}, '
                     f'got {softmax!r}')
  return SOFTMAXES[softmax](logits)


def intermediate_metrics(intermediates: PyTree) -> Dict[str, jax.Array]:
  """Sown probes as metrics: ``block_0/attn/attn_logit_max`` becomes
  ``layers/attn_logit_max/block_0`` (sown tuples are averaged, e.g. over
  SAM's two passes)."""
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(
      intermediates, is_leaf=lambda x: isinstance(x, tuple))[0]:
    parts = param_name(path).split('/')
    name, where = parts[-1], parts[0]
    out[f'layers/{name}/{where}'] = jnp.mean(jnp.stack(value))
  return out


def compute_loss(model: nn.Module, params: PyTree, model_state: PyTree,
                 batch: Batch, rng: Optional[jax.Array], options: Options,
                 train: bool) -> Tuple[jax.Array, Tuple[PyTree, Dict[str, jax.Array]]]:
  """Mean loss of ``batch`` and ``(new_model_state, metrics)``.

  Cross-entropy is the mean over every predicted position (tokens or
  examples) of ``log Z - log p~_y`` (see the module doc for ``Z`` under
  softmax and StableMax); with ``z_loss`` it adds ``z_loss * mean(log(Z)^2)``.
  MSE is ``mean_examples(0.5 * ||f(x) - y||^2)``.

  With ``options.log_per_layer`` and ``train``, the model's sown
  ``intermediates`` (transformer: residual variance and max attention logit
  per block) become metrics ``layers/<probe>/block_<i>``, and cross-entropy
  adds ``output_log_z``, the mean log-partition of the output.
  """
  variables = {'params': params, **model_state}
  probes = options.log_per_layer and train
  mutable = list(model_state) if (train and model_state) else False
  if probes:
    mutable = (mutable or []) + ['intermediates']
  rngs = {'dropout': rng} if rng is not None else {}
  chunk = getattr(options, 'vocab_chunk', None)
  extra = {'return_hidden': True} if chunk else {}
  out = model.apply(variables, batch['inputs'], train=train, rngs=rngs,
                    mutable=mutable, **extra)
  outputs, new_model_state = out if mutable else (out, model_state)
  metrics = {}
  if probes:
    new_model_state = dict(new_model_state)
    metrics.update(intermediate_metrics(new_model_state.pop('intermediates', {})))
    if not model_state:
      new_model_state = model_state
  mask = batch.get('mask')
  if chunk:
    loss, loss_metrics = _chunked_cross_entropy(
        model, params, outputs, batch['targets'], options, probes, mask)
    loss_metrics['loss'] = loss
  else:
    loss, loss_metrics = loss_from_outputs(outputs, batch['targets'], options,
                                           log_z_metric=probes, mask=mask)
  metrics.update(loss_metrics)
  return loss, (new_model_state, metrics)


def loss_from_outputs(outputs: jax.Array, targets: jax.Array,
                      options: Options, *, log_z_metric: bool = False,
                      mask: Optional[jax.Array] = None
                      ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The loss of `compute_loss` as a function of the model's outputs.

  ``compute_loss(...)[0] == loss_from_outputs(model(inputs), targets)[0]``:
  the split a generalized Gauss-Newton matrix needs (the Hessian of this
  function of the outputs, sandwiched between the model's Jacobians).

  ``mask`` (the batch's ``mask``, ``data.packing='truncate'``; shaped like
  ``targets``) weighs each position of the cross-entropy: means are over
  the positions where it is 1, padding counts for nothing.

  Returns:
    ``(loss, metrics)``; metrics hold ``loss``, and for cross-entropy
    ``accuracy`` (and ``output_log_z`` with ``log_z_metric``; ``z_loss`` and
    ``cross_entropy`` when a z-loss is on).
  """
  if options.loss not in LOSSES:
    raise ValueError(f'loss.name must be one of {tuple(LOSSES)}, '
                     f'got {options.loss!r}')
  extra = {} if mask is None else {'mask': mask}
  loss, metrics = LOSSES[options.loss](outputs, targets, options,
                                       log_z_metric, **extra)
  metrics['loss'] = loss
  return loss, metrics


def _cross_entropy(outputs, targets, options, log_z_metric, mask=None):
  log_z, log_unnorm = log_normalizer(outputs, options.softmax)
  label_logits = jnp.take_along_axis(log_unnorm, targets[..., None], axis=-1)[..., 0]
  return _cross_entropy_terms(log_z - label_logits, log_z,
                              jnp.argmax(outputs, -1), targets, options,
                              log_z_metric, mask)


def _chunked_cross_entropy(model, params, hidden, targets, options,
                           log_z_metric, mask=None):
  """`_cross_entropy` of the transformer's hidden states, its head applied
  by vocabulary chunks (``loss.vocab_chunk``; `dynamics.chunked_loss`)."""
  w_dV, b_V, scale, dtype = model.readout(params)
  h_Nd = hidden.reshape(-1, hidden.shape[-1]).astype(dtype)
  per_token, log_z, top = chunked_loss.chunked_cross_entropy(
      h_Nd, w_dV, b_V, targets.reshape(-1), scale=scale,
      chunk=options.vocab_chunk, phi=PHIS[options.softmax])
  shape = targets.shape
  return _cross_entropy_terms(per_token.reshape(shape), log_z.reshape(shape),
                              top.reshape(shape), targets, options,
                              log_z_metric, mask)


def _cross_entropy_terms(per_token, log_z, predicted, targets, options,
                         log_z_metric, mask=None):
  if mask is None:
    mean = jnp.mean
  else:
    weight = mask.astype(jnp.float32)
    mean = lambda x: jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)
  metrics = {}
  loss = mean(per_token)
  metrics['accuracy'] = mean(predicted == targets)
  if log_z_metric:
    metrics['output_log_z'] = mean(log_z)
  if options.z_loss:
    z_term = options.z_loss * mean(log_z ** 2)
    metrics['z_loss'] = z_term
    metrics['cross_entropy'] = loss
    loss = loss + z_term
  return loss, metrics


def _mse(outputs, targets, options, log_z_metric):
  del options, log_z_metric
  err = outputs - targets.reshape(outputs.shape)
  loss = 0.5 * jnp.mean(jnp.sum(err.reshape(err.shape[0], -1) ** 2, axis=-1))
  return loss, {}


# ``config.loss.name`` ('auto' resolves to one of these by the task):
# ``(outputs, targets, options, log_z_metric) -> (loss, metrics)``.
LOSSES: Dict[str, Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]] = {
    'cross_entropy': _cross_entropy,
    'mse': _mse,
}


def check(config: Any) -> None:
  """Raises ``ConfigError`` for an invalid ``config.loss`` field or output
  nonlinearity (``config.model.softmax``, which only cross-entropy reads)."""
  loss = config.loss
  errors.one_of('loss.name', loss.name, ('auto',) + tuple(LOSSES))
  errors.number('loss.z_loss', loss.z_loss, at_least=0)
  errors.integer('loss.vocab_chunk', loss.vocab_chunk, 1, optional=True)
  if loss.vocab_chunk is not None:
    errors.require(config.model.name == 'transformer', 'loss.vocab_chunk',
                   loss.vocab_chunk, 'applies only to model.name=transformer '
                   f'(the language model), not {config.model.name!r}')
    errors.require(loss.name != 'mse', 'loss.vocab_chunk', loss.vocab_chunk,
                   'applies only to the cross-entropy loss, not '
                   'loss.name=mse')
    errors.require(config.model.quantization is None, 'loss.vocab_chunk',
                   loss.vocab_chunk, 'does not fake-quantize the head: needs '
                   f'model.quantization=None, not {config.model.quantization!r}')
  errors.require(not loss.z_loss or loss.name != 'mse', 'loss.z_loss',
                 loss.z_loss, 'applies only to the cross-entropy loss, not '
                 'loss.name=mse')
  softmax = config.model.softmax
  errors.one_of('model.softmax', softmax, SOFTMAXES)
  errors.require(softmax == 'softmax' or loss.name != 'mse', 'model.softmax',
                 softmax, 'applies only to the cross-entropy loss, not '
                 'loss.name=mse')
