r"""The gradient noise scale (McCandlish et al., "An Empirical Model of
Large-Batch Training", 2018, App. A): `noise_scale` from gradients of
independent batches, and `GradientNoiseProbe`, which logs it during
training (``config.analysis.gns_every``)."""

from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.probes import Probe
from dynamics.types import PyTree


def noise_scale(grads: List[PyTree], small: int) -> Dict[str, float]:
  r"""The simple gradient noise scale from ``k`` gradients of independent
  batches of ``small`` examples each (McCandlish et al. 2018, App. A.1).

  With :math:`G_i` the small-batch gradients, :math:`G_\text{big}` their
  mean (``B_big = k * small`` examples) and :math:`B_s` = ``small``,

  .. math::
     |\mathcal G|^2_i = \frac{B_\text{big} |G_\text{big}|^2 - B_s |G_i|^2}
                             {B_\text{big} - B_s},\qquad
     \mathcal S_i = \frac{|G_i|^2 - |G_\text{big}|^2}{1/B_s - 1/B_\text{big}}

  are unbiased for :math:`|G|^2` and :math:`\mathrm{tr}\Sigma`;
  :math:`B_\text{simple} = \bar{\mathcal S} / \overline{|\mathcal G|^2}`
  (ratio of means, as the paper advises), its standard error by the delta
  method over the ``k`` pairs.

  Returns:
    ``gns_b_simple``, ``gns_b_simple_stderr``, ``gns_trace_cov``,
    ``gns_grad_norm_sq`` (and their standard errors).

  Raises:
    ValueError: fewer than 2 gradients.
  """
  k = len(grads)
  if k < 2:
    raise ValueError(f'the noise scale needs at least 2 batches, got {k}')
  flat = np.stack([np.concatenate([np.ravel(np.asarray(x, np.float64))
                                   for x in jax.tree.leaves(g)])
                   for g in grads])
  big, b_big = flat.mean(0), k * small
  small_sq, big_sq = np.sum(flat ** 2, 1), np.sum(big ** 2)
  g2 = (b_big * big_sq - small * small_sq) / (b_big - small)
  s = (small_sq - big_sq) / (1.0 / small - 1.0 / b_big)
  mg, ms = g2.mean(), s.mean()
  cov = np.cov(np.stack([s, g2])) / k
  ratio = ms / mg
  var = (cov[0, 0] / mg ** 2 + ms ** 2 * cov[1, 1] / mg ** 4
         - 2 * ms * cov[0, 1] / mg ** 3)
  return {'gns_b_simple': float(ratio),
          'gns_b_simple_stderr': float(np.sqrt(max(var, 0.0))),
          'gns_trace_cov': float(ms),
          'gns_trace_cov_stderr': float(np.sqrt(cov[0, 0])),
          'gns_grad_norm_sq': float(mg),
          'gns_grad_norm_sq_stderr': float(np.sqrt(cov[1, 1]))}


class GradientNoiseProbe(Probe):
  r"""The gradient noise scale :math:`B_\text{simple} = \mathrm{tr}\Sigma /
  |G|^2` (`noise_scale`) from ``num_batches`` training batches at the
  probed step (``train_batch(step + 1_000_000 + i)``: batches the run does
  not train on in its first million steps), in examples of the batch's
  leading axis; the critical batch size's predictor (McCandlish et al.,
  "An Empirical Model of Large-Batch Training", 2018)."""

  def __init__(self, every: int, *, num_batches: int = 4, loss_fn=None,
               name: str = 'gns'):
    if num_batches < 2:
      raise ValueError(f'num_batches must be >= 2, got {num_batches}')
    self.every, self.name, self.num_batches = every, name, num_batches
    self._loss_fn, self._grad = loss_fn, None

  def __call__(self, state, run) -> Dict[str, float]:
    step = int(state.step)
    batches = [jax.tree.map(jnp.asarray,
                            run.dataset.train_batch(step + 1_000_000 + i))
               for i in range(self.num_batches)]
    if self._loss_fn is None:  # The model state as data: one compilation.
      if self._grad is None or self._grad[0] is not run:
        loss = lambda p, bm: run.loss_fn(bm[1])(p, bm[0])
        self._grad = (run, jax.jit(jax.grad(loss)))
      batches = [(b, state.model_state) for b in batches]
    elif self._grad is None:
      self._grad = (None, jax.jit(jax.grad(self._loss_fn)))
    grads = [self._grad[1](state.params, b) for b in batches]
    small = int(jax.tree.leaves(batches[0])[0].shape[0])
    return noise_scale(grads, small)
