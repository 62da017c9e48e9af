"""The model's predictive distribution, for the Fisher kinds of curvature."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """The model's predictive distribution, for ``kind='fisher'`` and
  ``'empirical_fisher'``.

  Attributes:
    name: 'categorical' (softmax over the outputs' last axis: cross-entropy)
      or 'gaussian' (``N(outputs, noise_std^2 I)`` per example, the first
      axis: a squared error).
    noise_std: the Gaussian's standard deviation (required for 'gaussian').
    num_samples: labels sampled per position for the true Fisher.
    seed: seed of the sampled labels (the operator is fixed by it).

  Example:
    >>> lik = Likelihood('categorical')
    >>> lik.nll(jnp.zeros((2, 4)), jnp.array([0, 3]))
    Array([1.3862944, 1.3862944], dtype=float32)
  """
  name: str
  noise_std: float | None = None
  num_samples: int = 1
  seed: int = 0

  def __post_init__(self):
    if not int(self.num_samples) >= 1:
      raise ValueError(f'num_samples must be >= 1, got {self.num_samples}')
    if self.name not in ('categorical', 'gaussian'):
      raise ValueError(f"likelihood must be 'categorical' or 'gaussian', "
                       f'got {self.name!r}')
    if self.name == 'gaussian' and not (self.noise_std or 0) > 0:
      raise ValueError(
          "a 'gaussian' likelihood needs its noise model: "
          'Likelihood("gaussian", noise_std=SIGMA) with SIGMA > 0 (the '
          'outputs are the mean of N(f(x), SIGMA^2 I))')

  def num_positions(self, outputs: jax.Array) -> int:
    """The ``N`` of the means: every position but the class axis, or examples."""
    shape = np.shape(outputs)
    return int(np.prod(shape[:-1])) if self.name == 'categorical' else shape[0]

  def nll(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood (up to constants) per position, shape ``(N,)``."""
    if self.name == 'categorical':
      z = outputs.reshape(-1, outputs.shape[-1])
      y = targets.reshape(-1)
      return (jax.nn.logsumexp(z, axis=-1)
              - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0])
    err = (outputs - targets.reshape(outputs.shape)).reshape(outputs.shape[0], -1)
    return 0.5 * jnp.sum(err ** 2, axis=-1) / self.noise_std ** 2

  def sample(self, key: jax.Array, outputs: jax.Array) -> jax.Array:
    """``num_samples`` labels per position drawn from the model: shape
    ``(num_samples,) + targets' shape``."""
    outputs = jax.lax.stop_gradient(outputs)
    s = self.num_samples
    if self.name == 'categorical':
      return jax.random.categorical(key, outputs, axis=-1,
                                    shape=(s,) + outputs.shape[:-1])
    return outputs[None] + self.noise_std * jax.random.normal(
        key, (s,) + outputs.shape, outputs.dtype)


def as_likelihood(likelihood: Likelihood | str | None) -> Likelihood | None:
  """``Likelihood(likelihood)`` for a name, else ``likelihood`` as it is."""
  return Likelihood(likelihood) if isinstance(likelihood, str) else likelihood


def for_loss(loss: str, noise_std: float | None = None,
             num_samples: int = 1) -> Likelihood:
  """The likelihood whose negative log is a run's loss
  (`dynamics.step.StepOptions.loss`).

  Args:
    loss: the run's loss ('cross_entropy' or 'mse').
    noise_std: the Gaussian noise model of an MSE loss.
    num_samples: labels sampled per position for ``kind='fisher'``: the
      Fisher is a Monte Carlo estimate of the GGN (its expectation) from
      that many draws, fixed by the seed; one draw inflates the top
      eigenvalues (the estimate's noise adds positive curvature).

  Raises:
    ValueError: an MSE loss without ``noise_std`` (its noise model), or
      ``num_samples < 1``.

  Example:
    >>> for_loss('mse', noise_std=1.0)
    Likelihood(name='gaussian', noise_std=1.0, num_samples=1, seed=0)
  """
  if int(num_samples) < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}')
  if loss == 'cross_entropy':
    return Likelihood('categorical', num_samples=int(num_samples))
  if noise_std is None:
    raise ValueError(
        'the Fisher of an MSE loss needs a noise model: pass noise_std '
        '(--noise_std=SIGMA), the standard deviation of the Gaussian '
        'likelihood N(f(x), SIGMA^2) (SIGMA=1 matches the loss 0.5 |f - y|^2)')
  return Likelihood('gaussian', noise_std, num_samples=int(num_samples))
