r"""Probes of the actual update and of per-layer geometry (`dynamics.probes`
protocol; switched on by ``config.analysis.<name>_every`` through
`analysis.probes.from_config`).

=========================  ==============================================  ============================
probe (config switch)      logs                                            cost per call
=========================  ==============================================  ============================
`UpdateSharpnessProbe`     :math:`u^\top H u / \|u\|^2`, and each        one update + 1 HVP (+ 1 per
(``update_sharpness``)     layer's share (optionally its diagonal block)   layer for the blocks)
`UpdateRatioProbe`         :math:`\|u_l\| / \|\theta_l\|` per layer        one update (shared)
(``update_ratio``)
`LayerTraceProbe`          per-layer :math:`\mathrm{tr} H`,                ``num_probes`` HVPs + GGN products
(``layer_trace``)          :math:`\mathrm{tr}\,GGN` and their gap, from
                           shared Rademacher probes, with standard errors
`SpectralNormProbe`        :math:`\sigma_{\max}` of each weight matrix     ``num_iters`` matvecs per matrix
(``spectral_norm``)        and of its update (warm-started power
                           iteration)
`GradientNoiseProbe`       :math:`B_\text{simple} = \mathrm{tr}\Sigma /    ``num_batches`` gradients
(``gns``; in               \|G\|^2` from two batch sizes, with its
`analysis.noise_scale`)    standard error
`ActivationRMSProbe`       RMS of each block's output                      one forward pass
(``activation_rms``)
`HistogramProbe`           TensorBoard histograms of each layer's          one gradient + one update
(``histograms``; in        weights, gradient and update                    (shared)
`analysis.histogram_probe`)
=========================  ==============================================  ============================

The update :math:`u` is the one the run's optimizer makes from the probed
state on the next training batch (``run.dataset.train_batch(step)``),
computed by the run's own ``train_step`` on a copy of the state: the
actual update, whatever the optimizer (`next_update`); probes called at the
same step share it.
"""

import functools
from typing import Any, Callable, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from analysis import hessian
from analysis.hessian import blocks
# The noise scale lives in its own module; its probe is listed here too.
from analysis.noise_scale import GradientNoiseProbe, noise_scale
from dynamics import runs
from dynamics.probes import Probe
from dynamics.types import PyTree, param_names

_LAST_UPDATE: Dict[str, Any] = {}


def next_update(state: Any, run: runs.Run) -> PyTree:
  """:math:`u = \theta_{t+1} - \theta_t`: the update ``run``'s train step
  makes from ``state`` on training batch ``state.step`` (on a copy of the
  state: the loop's state is untouched). Cached for the step."""
  key = (id(run), int(state.step))
  if _LAST_UPDATE.get('key') != key:
    copy = jax.tree.map(jnp.copy, state)
    batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(int(state.step)))
    new, _ = run.train_step(copy, batch)
    _LAST_UPDATE.update(key=key, update=jax.tree.map(
        jnp.subtract, new.params, state.params))
  return _LAST_UPDATE['update']


def _layer_masks(params: PyTree) -> Dict[str, PyTree]:
  groups = blocks.layer_blocks(params, 'layers')
  return {layer: blocks.block_mask(params, lambda n, _, names=set(names):
                                   n in names)
          for layer, names in groups.items()}


def _dot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def _per_layer(params: PyTree, fn: Callable[[List[jax.Array]], float]
               ) -> Dict[str, float]:
  """``fn(leaves of the layer)`` for each layer (`blocks.layer_blocks`)."""
  leaves = dict(zip(param_names(params), jax.tree.leaves(params)))
  return {layer: fn([leaves[n] for n in names])
          for layer, names in blocks.layer_blocks(params, 'layers').items()}


class RunLoss:
  """The run's loss (and GGN parts) with the model state as data, so that
  every call of a probe reuses one compilation."""

  def __init__(self):
    self._run = None

  def __call__(self, run, state, batches):
    if run is not self._run:
      self._run = run
      self.loss = lambda p, bm: run.loss_fn(bm[1])(p, bm[0])
      self.model = lambda p, bm: run.model_fn(bm[1])(p, bm[0])
      out_loss = run.output_loss_fn()
      self.output_loss = lambda z, bm: out_loss(z, bm[0])
    return [(b, state.model_state) for b in batches]


def _probe_batches(run, batches):
  return run.probe_batches(1) if batches is None else batches(run) \
      if callable(batches) else list(batches)


def _stacked_masks(params: PyTree) -> Tuple[List[str], PyTree]:
  """Layer names and their 0/1 masks stacked on a leading axis per leaf."""
  masks = _layer_masks(params)
  names = list(masks)
  stacked = jax.tree.map(lambda *m: jnp.array(m, jnp.float32),
                         *[masks[n] for n in names])
  return names, stacked


def _split(masks: PyTree, u: PyTree) -> PyTree:
  """``u`` restricted to each layer: leaves ``(layers, *shape)``."""
  return jax.tree.map(lambda m, x: m.reshape((-1,) + (1,) * x.ndim).astype(
      x.dtype) * x[None], masks, u)


@functools.partial(jax.jit, static_argnames='blocks')
def _update_forms(matvec, masks, u, blocks):
  """``(u^T H u, |u|^2, per-layer u_l^T (Hu)_l, per-layer |u_l|^2, and with
  ``blocks`` per-layer u_l^T H u_l)``, in one compiled call."""
  hu = matvec(u)
  us = _split(masks, u)
  share = jax.vmap(_dot, in_axes=(0, None))(us, hu)
  norms = jax.vmap(_dot)(us, us)
  block = jax.vmap(lambda x: _dot(x, matvec(x)))(us) if blocks else share
  return _dot(u, hu), _dot(u, u), share, norms, block


class UpdateSharpnessProbe(Probe):
  r"""Directional sharpness of the actual update, :math:`u^\top H u /
  \|u\|^2` (the curvature the step sees: the loss changes by
  :math:`g^\top u + \frac12 u^\top H u`), from one HVP, with each layer's
  share :math:`u_l^\top (Hu)_l / \|u\|^2` (the shares sum to the whole;
  ``update_sharpness_share/<layer>``) and, with ``blocks``, each layer's
  diagonal block :math:`u_l^\top H_{ll} u_l / \|u_l\|^2`
  (``update_sharpness/<layer>``: one more HVP per layer).

  Args:
    every: period in steps.
    batches: the loss's batches (default: one held-out probe batch), or a
      function of the run.
    loss_fn: ``(params, batch) -> loss`` (default: the run's).
    update_fn: ``(state, run) -> u`` (default: `next_update`).
    blocks: also each layer's diagonal-block quotient.

  References:
    Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at
    the Edge of Stability" (2021), Sec. 5 (directional sharpness of the
    update); Rosenfeld & Risteski, "Outliers with Opposing Signals" (2024).
  """

  def __init__(self, every: int, *, batches=None, loss_fn=None,
               update_fn=None, blocks: bool = False,
               name: str = 'update_sharpness'):
    self.every, self.name, self.blocks = every, name, blocks
    self._batches, self._loss_fn = batches, loss_fn
    self._update_fn = update_fn or next_update
    self._run_loss, self._masks = RunLoss(), None

  def __call__(self, state, run) -> Dict[str, float]:
    u = self._update_fn(state, run)
    batches = _probe_batches(run, self._batches)
    if self._loss_fn is None:
      batches = self._run_loss(run, state, batches)
      loss = self._run_loss.loss
    else:
      loss = self._loss_fn
    op = hessian.curvature('hessian', state.params, batches, loss_fn=loss)
    if self._masks is None:
      self._masks = _stacked_masks(state.params)
    names, masks = self._masks
    whole, norm2, share, norms, block = jax.device_get(
        _update_forms(op.matvec, masks, u, self.blocks))
    out = {'update_sharpness': float(whole / norm2)}
    for i, n in enumerate(names):
      out[f'update_sharpness_share/{n}'] = float(share[i] / norm2)
      if self.blocks and norms[i] > 0:
        out[f'update_sharpness/{n}'] = float(block[i] / norms[i])
    return out


@jax.jit
def _layer_norms(masks, tree):
  return jnp.sqrt(jax.vmap(lambda x: _dot(x, x))(_split(masks, tree)))


class UpdateRatioProbe(Probe):
  r""":math:`\|u_l\| / \|\theta_l\|` of each layer and of the whole model
  (the relative step size; about 1e-3 per step is the folklore target)."""

  def __init__(self, every: int, *, update_fn=None,
               name: str = 'update_ratio'):
    self.every, self.name = every, name
    self._update_fn = update_fn or next_update
    self._masks = None

  def __call__(self, state, run) -> Dict[str, float]:
    u = self._update_fn(state, run)
    if self._masks is None:
      self._masks = _stacked_masks(state.params)
    names, masks = self._masks
    up, w = jax.device_get((_layer_norms(masks, u),
                            _layer_norms(masks, state.params)))
    out = {f'update_ratio/{n}': float(up[i] / w[i])
           for i, n in enumerate(names) if w[i] > 0}
    out['update_ratio'] = float(np.linalg.norm(up) / np.linalg.norm(w))
    return out


def layer_trace_forms(hvp: Callable, ggn: Callable, params: PyTree,
                      key: jax.Array, num_probes: int
                      ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  r"""Per layer, the Hutchinson forms :math:`z_l^\top (Hz)_l` and
  :math:`z_l^\top (Gz)_l` of shared Rademacher probes :math:`z`
  (unbiased for :math:`\mathrm{tr} H_{ll}` and :math:`\mathrm{tr} G_{ll}`:
  the other layers' entries of :math:`z` are independent of :math:`z_l`).

  Returns:
    ``{layer: (hessian forms (num_probes,), ggn forms (num_probes,))}``.
  """
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  zs = jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, (num_probes,) + x.shape, x.dtype)
      for k, x in zip(keys, leaves)])
  hz, gz = jax.vmap(hvp)(zs), jax.vmap(ggn)(zs)
  names = param_names(params)
  prod = lambda a: dict(zip(names, [
      np.asarray(jnp.sum((z * y).reshape(num_probes, -1), axis=1))
      for z, y in zip(jax.tree.leaves(zs), jax.tree.leaves(a))]))
  ph, pg = prod(hz), prod(gz)
  return {layer: (sum(ph[n] for n in ns), sum(pg[n] for n in ns))
          for layer, ns in blocks.layer_blocks(params, 'layers').items()}


def _mean_se(x: np.ndarray) -> Tuple[float, float]:
  return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x)))


class LayerTraceProbe(Probe):
  r"""Per-layer traces of the Hessian and of the GGN and the Gauss-Newton
  gap :math:`\mathrm{tr} H_{ll} - \mathrm{tr} G_{ll}` (the trace of the
  residual term :math:`\sum_i \nabla_z \ell_i \cdot \nabla^2 z_i`), from
  the same ``num_probes`` Rademacher probes: the gap's standard error is
  that of the paired differences (much smaller than either trace's).
  Logs ``hessian_trace/<layer>``, ``ggn_trace/<layer>``,
  ``gn_gap/<layer>`` and ``..._stderr``, and the sums over layers."""

  def __init__(self, every: int, *, batches=None, num_probes: int = 8,
               seed: int = 0, name: str = 'layer_trace'):
    if num_probes < 2:
      raise ValueError(f'num_probes must be >= 2, got {num_probes}')
    self.every, self.name, self.num_probes = every, name, num_probes
    self._batches, self._key = batches, jax.random.PRNGKey(seed)
    self._run_loss = RunLoss()

  def __call__(self, state, run) -> Dict[str, float]:
    batches = self._run_loss(run, state, _probe_batches(run, self._batches))
    r = self._run_loss
    h = hessian.curvature('hessian', state.params, batches, loss_fn=r.loss)
    g = hessian.curvature('ggn', state.params, batches, model_fn=r.model,
                          output_loss_fn=r.output_loss)
    forms = layer_trace_forms(h.matvec, g.matvec, state.params,
                              jax.random.fold_in(self._key, int(state.step)),
                              self.num_probes)
    forms['all'] = tuple(sum(f[i] for f in forms.values()) for i in (0, 1))
    out = {}
    for layer, (fh, fg) in forms.items():
      suffix = '' if layer == 'all' else f'/{layer}'
      for label, values in (('hessian_trace', fh), ('ggn_trace', fg),
                            ('gn_gap', fh - fg)):
        out[label + suffix], out[f'{label}_stderr{suffix}'] = _mean_se(values)
    return out


def _matrices(tree: PyTree) -> Dict[str, jax.Array]:
  """The weight matrices of a parameter tree: leaves with two or more axes
  as ``(fan-in, fan-out)`` (the last axis is the output's)."""
  return {n: x.reshape(-1, x.shape[-1])
          for n, x in zip(param_names(tree), jax.tree.leaves(tree))
          if x.ndim >= 2}


@jax.jit
def _power(w: jax.Array, v: jax.Array, num_iters: int
           ) -> Tuple[jax.Array, jax.Array]:
  """``num_iters`` power iterations on ``w^T w`` from ``v``: ``(sigma, v)``."""
  w = w.astype(jnp.float32)

  def body(_, v):
    x = w.T @ (w @ v)
    return x / jnp.maximum(jnp.linalg.norm(x), 1e-30)

  v = jax.lax.fori_loop(0, num_iters, body, v / jnp.linalg.norm(v))
  return jnp.linalg.norm(w @ v), v


class SpectralNormProbe(Probe):
  r"""The spectral norm :math:`\sigma_{\max}` of every weight matrix (a
  kernel reshaped to fan-in x fan-out) and, with ``updates``, of its update
  (the RMS-to-RMS geometry of Muon-style analyses: divide by
  :math:`\sqrt{d_\text{out}/d_\text{in}}`). Power iteration on
  :math:`W^\top W`, warm-started from the previous call's vectors (the
  probe's saved state; ``cold_iters`` on the first call, ``num_iters``
  after), so the estimate is a lower bound that tightens over calls.
  Logs ``spectral_norm/<name>`` and ``update_spectral_norm/<name>``."""

  def __init__(self, every: int, *, updates: bool = True,
               num_iters: int = 5, cold_iters: int = 30, update_fn=None,
               seed: int = 0, name: str = 'spectral_norm'):
    self.every, self.name, self.updates = every, name, updates
    self.num_iters, self.cold_iters = num_iters, cold_iters
    self._update_fn = update_fn or next_update
    self._key, self._vectors = jax.random.PRNGKey(seed), {}

  def state_dict(self) -> Dict[str, jax.Array]:
    return dict(self._vectors)

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    self._vectors = {k: jnp.asarray(v) for k, v in saved.items()}

  def _norms(self, prefix: str, tree: PyTree) -> Dict[str, float]:
    out = {}
    for i, (n, w) in enumerate(_matrices(tree).items()):
      key = f'{prefix}/{n}'
      v = self._vectors.get(key)
      iters = self.num_iters
      if v is None or v.shape != (w.shape[1],):
        v = jax.random.normal(jax.random.fold_in(self._key, i), (w.shape[1],))
        iters = self.cold_iters
      sigma, self._vectors[key] = _power(w, v, iters)
      out[key] = float(sigma)
    return out

  def __call__(self, state, run) -> Dict[str, float]:
    out = self._norms('spectral_norm', state.params)
    if self.updates:
      out.update(self._norms('update_spectral_norm',
                             self._update_fn(state, run)))
    return out


class ActivationRMSProbe(Probe):
  r"""The RMS :math:`\sqrt{\mathrm{mean}(h^2)}` of the output of every
  module down to ``depth`` levels below the model (blocks, embeddings,
  heads at the default 1), on one held-out probe batch in inference mode
  (``capture_intermediates``: one forward pass). Logs
  ``activation_rms/<module>``."""

  def __init__(self, every: int, *, depth: int = 1, batches=None,
               name: str = 'activation_rms'):
    self.every, self.name, self.depth = every, name, depth
    self._batches, self._run, self._fn = batches, None, None

  def _compile(self, run):
    model, depth = run.parts.model, self.depth

    @jax.jit
    def rms(params, model_state, inputs):
      _, state = model.apply({'params': params, **(model_state or {})}, inputs,
                             train=False, capture_intermediates=True,
                             mutable=['intermediates'])
      out = {}
      for path, leaf in jax.tree_util.tree_flatten_with_path(
          state['intermediates'])[0]:
        keys = [getattr(k, 'key', None) for k in path]
        if '__call__' not in keys:
          continue
        module = '/'.join(keys[:keys.index('__call__')])
        if module and module.count('/') < depth and module not in out:
          out[module] = jnp.sqrt(jnp.mean(jnp.square(leaf.astype(jnp.float32))))
      return out

    return rms

  def __call__(self, state, run) -> Dict[str, float]:
    if run is not self._run:
      self._run, self._fn = run, self._compile(run)
    batch = _probe_batches(run, self._batches)[0]
    values = jax.device_get(self._fn(state.params, state.model_state,
                                     jnp.asarray(batch['inputs'])))
    return {f'activation_rms/{k}': float(v) for k, v in values.items()}


__all__ = ['ActivationRMSProbe', 'GradientNoiseProbe', 'LayerTraceProbe',
           'SpectralNormProbe', 'UpdateRatioProbe', 'UpdateSharpnessProbe',
           'layer_trace_forms', 'next_update', 'noise_scale']
