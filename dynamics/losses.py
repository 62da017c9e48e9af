"""Losses of the train and eval steps, and the step's static options."""

import dataclasses
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dynamics import config_lib

PyTree = object
Batch = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Static (hashable) settings of the train step, read once from config."""
  loss: str = 'cross_entropy'
  z_loss: float = 0.0
  sam_rho: Optional[float] = None
  sam_adaptive: bool = False
  sam_eta: float = 0.0
  sam_mask: str = 'all'
  sam_microbatches: int = 1
  ema_decay: Optional[float] = None
  log_per_layer: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, task: str
                  ) -> 'StepOptions':
    s = config.optimizer.sam
    return cls(loss=config_lib.loss_name(config, task),
               z_loss=float(config.loss.z_loss),
               sam_rho=None if s.rho is None else float(s.rho),
               sam_adaptive=bool(s.adaptive), sam_eta=float(s.eta),
               sam_mask=s.mask, sam_microbatches=int(s.num_microbatches),
               ema_decay=config.ema.decay, log_per_layer=config.log_per_layer)


def compute_loss(model: nn.Module, params: PyTree, model_state: PyTree,
                 batch: Batch, rng: Optional[jax.Array], options: StepOptions,
                 train: bool) -> Tuple[jax.Array, Tuple[PyTree, Dict[str, jax.Array]]]:
  """Mean loss of ``batch`` and ``(new_model_state, metrics)``.

  Cross-entropy is the mean over every predicted position (tokens or
  examples); with ``z_loss`` it adds ``z_loss * mean(log(Z)^2)``. MSE is
  ``mean_examples(0.5 * ||f(x) - y||^2)``.
  """
  variables = {'params': params, **model_state}
  mutable = list(model_state) if (train and model_state) else False
  rngs = {'dropout': rng} if rng is not None else {}
  out = model.apply(variables, batch['inputs'], train=train, rngs=rngs,
                    mutable=mutable)
  outputs, new_model_state = out if mutable else (out, model_state)
  targets = batch['targets']
  metrics = {}
  if options.loss == 'cross_entropy':
    log_z = jax.nn.logsumexp(outputs, axis=-1)
    label_logits = jnp.take_along_axis(outputs, targets[..., None], axis=-1)[..., 0]
    loss = jnp.mean(log_z - label_logits)
    metrics['accuracy'] = jnp.mean(jnp.argmax(outputs, -1) == targets)
    if options.z_loss:
      z_term = options.z_loss * jnp.mean(log_z ** 2)
      metrics['z_loss'] = z_term
      metrics['cross_entropy'] = loss
      loss = loss + z_term
  elif options.loss == 'mse':
    err = outputs - targets.reshape(outputs.shape)
    loss = 0.5 * jnp.mean(jnp.sum(err.reshape(err.shape[0], -1) ** 2, axis=-1))
  else:
    raise ValueError(f'loss.name must be cross_entropy | mse, got {options.loss!r}')
  metrics['loss'] = loss
  return loss, (new_model_state, metrics)


