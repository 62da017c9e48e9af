r"""Merging models: uniform and greedy soups, Fisher-weighted averaging.

* Uniform soup (Wortsman et al. 2022): :math:`\bar\theta = \frac1K \sum_k
  \theta_k`.
* Greedy soup (their Recipe 1): sort the ingredients by held-out loss, start
  from the best, and add each next one only if the uniform average of the
  soup with it has a held-out loss no worse than without it.
* Fisher merging (Matena & Raffel 2022): per parameter,

  .. math::
    \bar\theta_j = \frac{\sum_k \lambda_k F_{k,j} \theta_{k,j}}
                        {\sum_k \lambda_k F_{k,j}},

  with :math:`F_k` the diagonal of model ``k``'s Fisher, estimated here by
  `analysis.hessian.diagonal` on the 'fisher' operator (labels sampled from
  the model), floored at ``fisher_floor`` as the authors' code does
  (``fisher_floor=1e-6``), so a parameter no model's Fisher sees falls back
  to the plain average.

References:
  Wortsman et al., "Model soups: averaging weights of multiple fine-tuned
  models improves accuracy without increasing inference time" (ICML 2022).
  Matena & Raffel, "Merging Models with Fisher-Weighted Averaging"
  (NeurIPS 2022).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import merging
from dynamics.types import PyTree


def _check(params_list: Sequence[PyTree], name: str = 'params_list') -> None:
  if not params_list:
    raise ValueError(f'{name}: need at least one model to merge')


def uniform_soup(params_list: Sequence[PyTree]) -> PyTree:
  r""":math:`\frac1K \sum_k \theta_k` (`dynamics.merging.merge_params`).

  Example:
    >>> uniform_soup([jnp.ones(2), jnp.zeros(2)]).tolist()
    [0.5, 0.5]
  """
  _check(params_list)
  k = len(params_list)
  return merging.merge_params(iter(params_list), [1.0 / k] * k)


def greedy_soup(params_list: Sequence[PyTree],
                held_out_loss: Callable[[PyTree], float]
                ) -> Tuple[PyTree, List[int], List[float]]:
  """Wortsman et al.'s greedy soup.

  Args:
    params_list: the ingredients.
    held_out_loss: ``params -> float``, lower is better.

  Returns:
    ``(soup, indices of the ingredients kept (best first), held-out loss of
    each ingredient)``.
  """
  _check(params_list)
  scores = [float(held_out_loss(p)) for p in params_list]
  order = [int(i) for i in np.argsort(scores, kind='stable')]
  kept = [order[0]]
  soup, best = params_list[order[0]], scores[order[0]]
  for i in order[1:]:
    candidate = uniform_soup([params_list[j] for j in kept + [i]])
    loss = float(held_out_loss(candidate))
    if loss <= best:
      kept, soup, best = kept + [i], candidate, loss
  return soup, kept, scores


def fisher_merge(params_list: Sequence[PyTree], fishers: Sequence[PyTree],
                 weights: Optional[Sequence[float]] = None, *,
                 fisher_floor: float = 1e-6) -> PyTree:
  r"""Fisher-weighted average :math:`\sum_k \lambda_k F_k \theta_k /
  \sum_k \lambda_k F_k`, with :math:`F_k \ge` ``fisher_floor``.

  Args:
    params_list: the models.
    fishers: one diagonal Fisher per model, shaped like its parameters.
    weights: :math:`\lambda_k` (default: equal).
    fisher_floor: lower bound on each Fisher entry.

  Example:
    >>> fisher_merge([jnp.zeros(2), jnp.ones(2)],
    ...              [jnp.array([1., 3.]), jnp.array([3., 1.])]).tolist()
    [0.75, 0.25]
  """
  _check(params_list)
  if len(fishers) != len(params_list):
    raise ValueError(f'fishers: got {len(fishers)} for {len(params_list)} '
                     'models')
  lam = (np.full(len(params_list), 1.0 / len(params_list)) if weights is None
         else merging.check_weights(weights, len(params_list)))
  num = den = None
  for l, p, f in zip(lam, params_list, fishers):
    fw = jax.tree.map(lambda x: float(l) * jnp.maximum(
        x.astype(jnp.float32), fisher_floor), f)
    term = jax.tree.map(lambda w, x: w * x.astype(jnp.float32), fw, p)
    num = term if num is None else jax.tree.map(jnp.add, num, term)
    den = fw if den is None else jax.tree.map(jnp.add, den, fw)
  return jax.tree.map(lambda n, d, p: (n / d).astype(p.dtype), num, den,
                      params_list[0])


def diagonal_fisher(run, step: Optional[int] = None, *, num_batches: int = 2,
                    num_hvps: int = 64, seed: int = 0,
                    noise_std: Optional[float] = None) -> PyTree:
  """The diagonal of the Fisher of ``run``'s checkpoint ``step``, by
  Hutchinson's estimator (`analysis.hessian.diagonal` of
  `analysis.hessian.run_curvature(run, 'fisher', step)`); entries are
  non-negative in expectation, and `fisher_merge` floors them."""
  from analysis import hessian  # pylint: disable=g-import-not-at-top
  op = hessian.run_curvature(run, 'fisher', step, num_batches=num_batches,
                             noise_std=noise_std)
  return hessian.diagonal(op, num_hvps=num_hvps,
                          key=jax.random.PRNGKey(seed))
