r"""Training-time probes: measurements the training loop takes every few steps.

``train_and_evaluate(config, workdir, callbacks=from_config(config))`` logs
what ``config.analysis`` asks for (sharpness, Hessian trace, NTK statistics)
into ``metrics.jsonl``; ``experiments/main.py`` does exactly that. The probes
live here, in ``analysis/``, because ``dynamics/`` never imports the analysis
code.

Every probe follows one protocol (`Probe`):

* ``every``: the loop calls the probe at the steps that are multiples of it
  (step 0 included);
* ``probe(state, run) -> {name: float}``: ``state`` is the
  `dynamics.step.TrainState` after ``state.step`` updates, ``run`` the
  `dynamics.runs.Run` being trained (its ``loss_fn``, ``apply_fn``,
  ``probe_batches``, ``dataset``);
* ``state_dict() -> {name: array}``: what the probe carries from one call to
  the next, saved with each checkpoint (``{}`` while there is nothing);
* ``load_state_dict(saved)``: on resume, with what the checkpoint saved, so
  that the resumed run continues the same series as an uninterrupted one.
"""

import functools
import math
from typing import Any, Dict, List, Mapping, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from analysis import hessian
from analysis import ntk as ntk_lib
from dynamics import optim as optim_lib
from dynamics import runs
from dynamics.step import TrainState
from dynamics.types import Batch, LossFn, PyTree


class Probe(Protocol):
  """What the training loop expects of a probe (see the module docstring)."""
  every: int

  def __call__(self, state: TrainState, run: runs.Run) -> Dict[str, float]:
    ...

  def state_dict(self) -> Dict[str, Any]:
    ...

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    ...


def from_config(config: ml_collections.ConfigDict) -> List[Probe]:
  """The probes ``config.analysis`` enables (empty when all are off)."""
  out = []
  a = config.analysis
  if a.sharpness_every is not None or a.trace_every is not None:
    out.append(SharpnessProbe(config))
  if a.ntk_every is not None:
    out.append(NTKProbe(config))
  return out


# ---------------------------------------------------------------------------
# The edge of stability.


class SharpnessProbe:
  r"""Logs the top Hessian eigenvalue (and friends) of the loss.

  At multiples of ``config.analysis.sharpness_every`` it logs

  * ``sharpness``: :math:`\lambda_{\max}(H)` of the loss on the probe batches
    (gradient descent is stable on a quadratic while it is below
    :math:`2/\eta`, the edge of stability);
  * ``sharpness_hvps``: Hessian-vector products it took;
  * ``preconditioned_sharpness`` (and ``..._hvps``): for Adam-type optimizer
    states after their first update, :math:`\lambda_{\max}(P^{-1}H)`
    (threshold :math:`(2 + 2\beta_1)/((1 - \beta_1)\eta)`);

  and at multiples of ``config.analysis.trace_every``, ``hessian_trace`` and
  ``hessian_trace_stderr`` (Hutchinson). Lanczos is warm-started from the
  previous top eigenvector (plus a little noise, so that a new top direction
  is not missed) and stops when the Ritz residual is below ``tol``
  :math:`\cdot\lambda`; a handful of HVPs per probe when the top direction
  moves slowly, at most ``config.analysis.sharpness_iters``. The previous
  eigenvectors are the probe's saved state, so a resumed run warm-starts as
  the uninterrupted one did.

  The probe batches are ``run.probe_batches(config.analysis
  .sharpness_batches)`` (held-out), or the first training batches with
  ``config.analysis.sharpness_data='train'`` -- for full-batch gradient
  descent, the whole training set, whose sharpness is what sits at
  :math:`2/\eta`.

  Args:
    config: the run's config (reads ``analysis``, ``optimizer``, ``seed``).
    tol: relative Ritz residual at which Lanczos stops.
    min_iters: HVPs always spent (guards against a stale warm start).
    warm_start_noise: relative size of the random component added to the
      previous eigenvector.
    trace_probes: Rademacher probes per trace estimate.
  """

  def __init__(self, config: ml_collections.ConfigDict, *, tol: float = 3e-3,
               min_iters: int = 3, warm_start_noise: float = 0.1,
               trace_probes: int = 10):
    a = config.analysis
    self.sharpness_every = a.sharpness_every
    self.trace_every = a.trace_every
    periods = [int(p) for p in (a.sharpness_every, a.trace_every) if p]
    if not periods:
      raise ValueError('SharpnessProbe needs analysis.sharpness_every or '
                       'analysis.trace_every')
    # Equal to sharpness_every unless a trace period is also set.
    self.every = functools.reduce(math.gcd, periods)
    self.num_iters = int(a.sharpness_iters)
    self.num_batches = int(a.sharpness_batches)
    self.data = a.sharpness_data
    hyper = optim_lib.hyperparameters(config.optimizer)  # Adam-type: b2, eps.
    self.b2, self.eps = hyper.get('b2'), hyper.get('eps')
    self.tol, self.min_iters = tol, min_iters
    self.warm_start_noise, self.trace_probes = warm_start_noise, trace_probes
    self._key = jax.random.PRNGKey(config.seed)
    self._run, self._loss = None, None
    # The previous top eigenvectors, flat ('hessian', 'preconditioned').
    self._previous: Dict[str, jax.Array] = {}

  def state_dict(self) -> Dict[str, jax.Array]:
    """The previous top eigenvectors (flat), for the warm start."""
    return dict(self._previous)

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    """Restores what `state_dict` saved (on resume)."""
    self._previous = {name: jnp.asarray(v) for name, v in saved.items()}

  def _loss_fn(self, run: runs.Run) -> LossFn:
    # One loss function per run, taking the model state as data, so that
    # every probe reuses the same compiled Lanczos.
    if run is not self._run:
      self._run = run

      def loss(params, batch_and_model_state):
        batch, model_state = batch_and_model_state
        return run.loss_fn(model_state)(params, batch)
      self._loss = loss
    return self._loss

  def _start(self, name: str, like: PyTree, key: jax.Array) -> PyTree:
    """Warm start: previous eigenvector + noise (random on the first call)."""
    noise = jax.tree.map(lambda p: jax.random.normal(key, p.shape, p.dtype),
                         like)
    noise = optax.tree.scale(1 / optax.tree.norm(noise), noise)
    previous = self._previous.get(name)
    if previous is None:
      return noise
    previous = ravel_pytree(like)[1](previous)
    return optax.tree.add(previous,
                          optax.tree.scale(self.warm_start_noise, noise))

  def batches(self, run: runs.Run) -> List[Batch]:
    """The batches whose loss the probe measures."""
    if self.data == 'train':
      return [run.dataset.train_batch(i) for i in range(self.num_batches)]
    return run.probe_batches(self.num_batches)

  def __call__(self, state: TrainState, run: runs.Run) -> Dict[str, float]:
    step = int(state.step)
    loss = self._loss_fn(run)
    batches = [(b, state.model_state) for b in self.batches(run)]
    key = jax.random.fold_in(self._key, step)
    out: Dict[str, float] = {}
    if self.sharpness_every and step % self.sharpness_every == 0:
      vals, vecs, info = hessian.top_eigenpairs(
          loss, state.params, batches, k=1, num_iters=self.num_iters,
          tol=self.tol, key=key,
          init_vector=self._start('hessian', state.params, key),
          min_iters=self.min_iters, return_info=True)
      self._previous['hessian'] = ravel_pytree(vecs[0])[0]
      out['sharpness'] = float(vals[0])
      out['sharpness_hvps'] = info['num_hvps']
      out.update(self._preconditioned(loss, state, batches, key))
    if self.trace_every and step % self.trace_every == 0:
      estimate, stderr = hessian.trace(loss, state.params, batches,
                                       num_probes=self.trace_probes, key=key)
      out['hessian_trace'] = estimate
      out['hessian_trace_stderr'] = stderr
    return out

  def _preconditioned(self, loss, state, batches, key) -> Dict[str, float]:
    try:
      _, count = hessian.find_second_moment(state.opt_state)
    except ValueError:
      return {}  # Not an adaptive optimizer.
    if count is not None and int(count) == 0:
      return {}  # nu = 0 before the first update: P^{-1} H is meaningless.
    value, info = hessian.preconditioned_sharpness(
        loss, state.params, batches, state.opt_state, b2=self.b2,
        eps=self.eps, num_iters=self.num_iters, tol=self.tol, key=key,
        init_vector=self._start('preconditioned', state.params, key),
        min_iters=self.min_iters, return_info=True)
    self._previous['preconditioned'] = ravel_pytree(info['eigvec'])[0]
    return {'preconditioned_sharpness': value,
            'preconditioned_sharpness_hvps': info['num_hvps']}


# ---------------------------------------------------------------------------
# Lazy vs rich: how far the NTK moves.


class NTKProbe:
  """Logs NTK statistics on a fixed probe set every ``config.analysis.ntk_every``.

  Returns ``ntk_top_eig`` (largest eigenvalue of the traced kernel),
  ``ntk_trace``, ``ntk_alignment`` (centered alignment with the probe
  labels), ``ntk_distance_init`` (kernel distance to the kernel at the first
  call, i.e. initialization) and ``ntk_velocity`` (kernel distance to the
  previous call's kernel, per step elapsed; 0 at the first call). The probe
  set is the first ``config.analysis.ntk_num_examples`` examples of
  ``run.probe_batches`` (held out).

  The kernel at initialization and the previous ``(step, kernel)`` are the
  probe's saved state: after a resume, ``ntk_distance_init`` is still
  measured from the initialization and ``ntk_velocity`` continues.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.every = int(config.analysis.ntk_every)
    self.num_examples = int(config.analysis.ntk_num_examples)
    # Kernels are kept in the dtype they were computed in (saved as is).
    self._init: Optional[np.ndarray] = None
    self._prev: Optional[Tuple[int, np.ndarray]] = None
    self._run, self._apply_fn = None, None

  def state_dict(self) -> Dict[str, Any]:
    """The kernel at initialization and the previous ``(step, kernel)``."""
    if self._init is None:
      return {}
    return {'init': self._init, 'prev_step': int(self._prev[0]),
            'prev': self._prev[1]}

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    """Restores what `state_dict` saved (on resume)."""
    self._init = np.asarray(saved['init'])
    self._prev = (int(saved['prev_step']), np.asarray(saved['prev']))

  def __call__(self, state: TrainState, run: runs.Run) -> Dict[str, float]:
    per_batch = max(1, int(run.dataset.batch_size))
    batches = run.probe_batches(math.ceil(self.num_examples / per_batch))
    inputs, targets = ntk_lib.probe_examples(batches, self.num_examples)
    if self._apply_fn is None or state.model_state or run is not self._run:
      # Stateless models keep one apply_fn, hence one compilation, for the run.
      self._run, self._apply_fn = run, run.apply_fn(state.model_state)
    apply_fn = self._apply_fn
    ntk = np.asarray(jax.device_get(
        ntk_lib.empirical_ntk(apply_fn, state.params, jnp.asarray(inputs))))
    k = ntk_lib.output_size(apply_fn, state.params, jnp.asarray(inputs))
    step = int(state.step)
    if self._init is None:
      self._init = ntk
    velocity = 0.0
    if self._prev is not None and step > self._prev[0]:
      velocity = (ntk_lib.kernel_distance_np(self._prev[1], ntk)
                  / (step - self._prev[0]))
    self._prev = (step, ntk)
    ntk_f64 = ntk.astype(np.float64)
    return {
        'ntk_top_eig': float(np.linalg.eigvalsh(ntk_f64)[-1]),
        'ntk_trace': float(np.trace(ntk_f64)),
        'ntk_alignment': float(ntk_lib.kernel_alignment(ntk_f64, targets,
                                                        num_classes=k)),
        'ntk_distance_init': ntk_lib.kernel_distance_np(self._init, ntk),
        'ntk_velocity': velocity,
    }
