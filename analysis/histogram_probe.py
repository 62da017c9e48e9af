"""Histograms of each layer's weights, gradient and update, for TensorBoard
(`HistogramProbe`; switched on by ``config.analysis.histograms_every``
through `analysis.probes.from_config`).

The values are `dynamics.histograms.Histogram`s: the run's metric writer
keeps them in ``histograms.jsonl`` and writes them to the run's TensorBoard
directory as histograms (``histograms/weights/<layer>``,
``histograms/gradients/<layer>``, ``histograms/updates/<layer>``), not to
``metrics.jsonl``. Cost per call: one gradient and the run's own update on
the next training batch (shared with the update probes,
`analysis.update_probes.next_update`), and one pass over the parameters on
the host.
"""

from typing import Callable, Dict, Optional

import jax
import numpy as np

from analysis.hessian import blocks
from analysis.update_probes import next_update
from dynamics.histograms import Histogram, histogram
from dynamics.probes import Probe
from dynamics.types import PyTree, param_names


def layer_histograms(tree: PyTree, num_buckets: int = 30
                     ) -> Dict[str, Histogram]:
  """``{layer: Histogram}`` of the values of each layer's parameters
  (`analysis.hessian.blocks.layer_blocks`), all its tensors pooled.

  Example:
    >>> tree = {'dense': {'kernel': np.array([[0., 2.]]), 'bias': np.ones(1)}}
    >>> layer_histograms(tree, num_buckets=2)['dense']
    Histogram(edges=[0.0, 1.0, 2.0], counts=[1, 2])
  """
  leaves = dict(zip(param_names(tree), jax.device_get(jax.tree.leaves(tree))))
  return {layer: histogram(np.concatenate(
      [np.ravel(leaves[n]).astype(np.float64) for n in names]), num_buckets)
          for layer, names in blocks.layer_blocks(tree, 'layers').items()}


class HistogramProbe(Probe):
  """Per-layer histograms of the weights :math:`\\theta`, of the gradient
  of the training loss on the next training batch, and of the update
  :math:`u` the run's optimizer makes from it (module doc). No state."""

  def __init__(self, every: int, *, num_buckets: int = 30,
               update_fn: Optional[Callable] = None,
               name: str = 'histograms'):
    self.every, self.name, self.num_buckets = every, name, num_buckets
    self._update_fn = update_fn or next_update
    self._run, self._grad = None, None

  def state_dict(self):
    return {}

  def load_state_dict(self, saved):
    del saved

  def __call__(self, state, run) -> Dict[str, Histogram]:
    if run is not self._run:  # The model state is an argument: current.
      self._run = run
      self._grad = jax.jit(jax.grad(
          lambda params, batch, model_state: run.loss_fn(model_state)(
              params, batch)))
    batch = jax.tree.map(np.asarray, run.dataset.train_batch(int(state.step)))
    trees = {'weights': state.params, 'gradients': self._grad(
        state.params, batch, state.model_state),
             'updates': self._update_fn(state, run)}
    return {f'histograms/{kind}/{layer}': h
            for kind, tree in trees.items()
            for layer, h in layer_histograms(tree, self.num_buckets).items()}
