r"""Training-time probes: the sharpness and the NTK, measured as a run trains.

A probe is a value built from what it measures (`SharpnessProbe`,
`NTKProbe`), following the training loop's protocol
(`dynamics.probes.Probe`); they live here, in ``analysis/``, because
``dynamics/`` never imports the analysis code. `from_config` is the one
place that reads ``config.analysis``::

  train_and_evaluate(config, workdir, probes=from_config(config))

(``experiments/main.py`` does exactly that), or by hand::

  probes = [SharpnessProbe(20, trace_every=100, batches=training(4)),
            NTKProbe(50, num_examples=128)]

Where the probe batches come from is a batch source: a list of batches, or
a function of the run (`held_out`, `training`).
"""

import contextlib
import functools
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from analysis import hessian
from analysis import ntk as ntk_lib
from analysis.probe_batches import BadCount as _BadCount
from analysis.probe_batches import Batches as _Batches
from analysis.probe_batches import BatchSource, held_out, training
from analysis.probe_batches import check_count as _check_count
from analysis import update_probes as up
from analysis.histogram_probe import HistogramProbe
from dynamics import config_lib, runs
from dynamics import optim as optim_lib
from dynamics.probes import Probe
from dynamics.step import TrainState
from dynamics.types import LossFn, PyTree

def from_config(config: ml_collections.ConfigDict) -> List[Probe]:
  """The probes ``config.analysis`` enables (empty when all are off).

  Raises:
    ConfigError: a value a probe refuses (the message names the field).
  """
  config_lib.check_analysis(config)
  a, out = config.analysis, []
  if a.sharpness_every is not None or a.trace_every is not None:
    sources = {'eval': held_out, 'train': training}  # analysis.sharpness_data
    if a.sharpness_data not in sources:
      raise config_lib.ConfigError(
          f'config.analysis.sharpness_data={a.sharpness_data!r}: must be one '
          f'of {", ".join(sources)}')
    with _fields(every='sharpness_every', trace_every='trace_every',
                 num_iters='sharpness_iters', num_batches='sharpness_batches'):
      hyper = optim_lib.hyperparameters(config.optimizer)  # Adam-type's.
      b2, eps = hyper.get('b2'), hyper.get('eps', 1e-8)
      out.append(SharpnessProbe(
          a.sharpness_every, trace_every=a.trace_every,
          batches=sources[a.sharpness_data](a.sharpness_batches),
          num_iters=a.sharpness_iters, b2=b2, eps=eps, seed=config.seed,
          optimizer=(config.optimizer.name, hyper)))
  if a.ntk_every is not None:
    with _fields(every='ntk_every', num_examples='ntk_num_examples'):
      out.append(NTKProbe(a.ntk_every, num_examples=a.ntk_num_examples))
  for every, make in (  # The update, layer and noise probes.
      (a.update_sharpness_every, up.UpdateSharpnessProbe),
      (a.update_ratio_every, up.UpdateRatioProbe),
      (a.layer_trace_every, functools.partial(
          up.LayerTraceProbe, num_probes=a.layer_trace_probes, seed=config.seed)),
      (a.spectral_norm_every, up.SpectralNormProbe),
      (a.gns_every, functools.partial(up.GradientNoiseProbe,
                                      num_batches=a.gns_batches)),
      (a.activation_rms_every, up.ActivationRMSProbe),
      (a.histograms_every, HistogramProbe)):
    if every is not None:
      out.append(make(every))
  return out


@contextlib.contextmanager
def _fields(**fields: str):
  """Turns a probe's refusal into a `ConfigError` naming the config field."""
  try:
    yield
  except _BadCount as e:
    raise config_lib.ConfigError(
        f'config.analysis.{fields[e.name]}={e.value!r}: must be a positive '
        'integer') from None


# ---------------------------------------------------------------------------
# The edge of stability.


class SharpnessProbe(Probe):
  r"""Logs the top Hessian eigenvalue (and friends) of a loss.

  At multiples of ``every`` it logs

  * ``sharpness``: :math:`\lambda_{\max}(H)` of the loss on the probe batches
    (gradient descent is stable on a quadratic while it is below
    :math:`2/\eta`, the edge of stability);
  * ``sharpness_hvps``: Hessian-vector products it took;
  * ``sharpness_loss`` (with ``log_loss``): the loss on those batches;
  * ``preconditioned_sharpness`` (and ``..._hvps``): for Adam-type optimizer
    states after their first update, :math:`\lambda_{\max}(P^{-1}H)`
    (threshold :math:`(2 + 2\beta_1)/((1 - \beta_1)\eta)`);

  and at multiples of ``trace_every``, ``hessian_trace`` and
  ``hessian_trace_stderr`` (Hutchinson). Lanczos is warm-started from the
  previous top eigenvector (plus a little noise, so that a new top direction
  is not missed) and stops when the Ritz residual is below ``tol``
  :math:`\cdot\lambda`; a handful of HVPs per probe when the top direction
  moves slowly, at most ``num_iters``. The previous eigenvectors are the
  probe's saved state, so a resumed run warm-starts as the uninterrupted one
  did; without them (the probe turned on at a resume) it starts cold, which
  costs HVPs, not accuracy.

  Args:
    every: period of the sharpness (None: only the trace).
    trace_every: period of the trace (None: none).
    batches: the probe batches, or a function of the run returning them
      (`held_out`, `training`); the loss is their mean.
    loss_fn: ``(params, batch) -> scalar`` (default: the run's inference
      loss at the state's model state). One function for several runs of
      the same model compiles Lanczos once for all of them.
    num_iters: cap on HVPs per Lanczos run.
    tol: relative Ritz residual at which Lanczos stops.
    min_iters: HVPs always spent (guards against a stale warm start).
    warm_start_noise: relative size of the random component added to the
      previous eigenvector.
    trace_probes: Rademacher probes per trace estimate.
    b2, eps: the Adam-type optimizer's second-moment decay (None: no bias
      correction) and epsilon, for the preconditioned sharpness.
    optimizer: ``(config.optimizer.name, its section)``: that optimizer's
      own ``P`` (`analysis.hessian.precondition.PRECONDITIONERS`; none
      logged for one without a diagonal preconditioner, e.g. muon, lion);
      None: the first Adam-type ``nu`` in the state, with ``b2``, ``eps``.
    log_loss: also log ``sharpness_loss``.
    seed: seed of the start vectors and trace probes (folded with the step).
    name: the key of the probe's state in checkpoints.
  """

  def __init__(self, every: Optional[int] = None, *,
               trace_every: Optional[int] = None,
               batches: BatchSource = held_out(1),
               loss_fn: Optional[LossFn] = None, num_iters: int = 20,
               tol: float = 3e-3, min_iters: int = 3,
               warm_start_noise: float = 0.1, trace_probes: int = 10,
               b2: Optional[float] = None, eps: float = 1e-8,
               log_loss: bool = False, seed: int = 0,
               name: str = 'sharpness',
               optimizer: Optional[Tuple[str, Any]] = None):
    periods = [p for p in (every, trace_every) if p is not None]
    if not periods:
      raise ValueError('SharpnessProbe needs every (the sharpness) or '
                       'trace_every (the trace)')
    for label, value in (('every', every), ('trace_every', trace_every),
                         ('num_iters', num_iters),
                         ('trace_probes', trace_probes)):
      if value is not None:
        _check_count(label, value)
    self.sharpness_every, self.trace_every = every, trace_every
    # Equal to every unless a trace period is also set.
    self.every = functools.reduce(math.gcd, periods)
    self.name, self.num_iters, self.tol = name, num_iters, tol
    self.min_iters, self.warm_start_noise = min_iters, warm_start_noise
    self.trace_probes, self.b2, self.eps = trace_probes, b2, eps
    self.log_loss, self.optimizer = log_loss, optimizer
    self._batches, self._loss_fn = _Batches(batches), loss_fn
    self._key = jax.random.PRNGKey(seed)
    self._run, self._run_loss, self._jit_loss = None, None, None
    # The previous top eigenvectors, flat ('hessian', 'preconditioned').
    self._previous: Dict[str, jax.Array] = {}

  def state_dict(self) -> Dict[str, jax.Array]:
    """The previous top eigenvectors (flat), for the warm start."""
    return dict(self._previous)

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    """Restores what `state_dict` saved (on resume)."""
    self._previous = {name: jnp.asarray(v) for name, v in saved.items()}

  def _loss_and_batches(self, state: TrainState, run: runs.Run
                        ) -> Tuple[LossFn, List[Any]]:
    batches = self._batches(run)
    if self._loss_fn is not None:
      return self._loss_fn, batches
    if run is not self._run:
      # One loss function per run, taking the model state as data, so that
      # every call reuses the same compiled Lanczos.
      def loss(params, batch_and_model_state):
        batch, model_state = batch_and_model_state
        return run.loss_fn(model_state)(params, batch)
      self._run, self._run_loss = run, loss
    return self._run_loss, [(b, state.model_state) for b in batches]

  def _start(self, name: str, like: PyTree, key: jax.Array) -> PyTree:
    """Warm start: previous eigenvector + noise (random on the first call)."""
    flat, unravel = ravel_pytree(like)
    noise = jax.random.normal(key, flat.shape, flat.dtype)
    start = noise / jnp.linalg.norm(noise)
    previous = self._previous.get(name)
    if previous is not None:
      start = previous + self.warm_start_noise * start
    return unravel(start)

  def _mean_loss(self, loss: LossFn, params: PyTree, batches) -> float:
    if self._jit_loss is None or self._jit_loss[0] is not loss:
      self._jit_loss = (loss, jax.jit(loss))
    return float(np.mean([float(self._jit_loss[1](params, b))
                          for b in batches]))

  def __call__(self, state: TrainState, run: runs.Run) -> Dict[str, float]:
    step = int(state.step)
    loss, batches = self._loss_and_batches(state, run)
    key = jax.random.fold_in(self._key, step)
    out: Dict[str, float] = {}
    op = hessian.curvature('hessian', state.params, batches, loss_fn=loss)
    if self.sharpness_every and step % self.sharpness_every == 0:
      vals, vecs, info = hessian.top_eigenpairs(
          op, k=1, num_iters=self.num_iters, tol=self.tol, key=key,
          init_vector=self._start('hessian', state.params, key),
          min_iters=self.min_iters, return_info=True)
      self._previous['hessian'] = ravel_pytree(vecs[0])[0]
      out['sharpness'] = float(vals[0])
      out['sharpness_hvps'] = info['num_hvps']
      if self.log_loss:
        out['sharpness_loss'] = self._mean_loss(loss, state.params, batches)
      out.update(self._preconditioned(op, state, key))
    if self.trace_every and step % self.trace_every == 0:
      estimate, stderr = hessian.trace(op, num_probes=self.trace_probes,
                                       key=key)
      out['hessian_trace'] = estimate
      out['hessian_trace_stderr'] = stderr
    return out

  def _preconditioned(self, op, state, key) -> Dict[str, float]:
    name, hyper = self.optimizer or (None, None)
    if name is not None and not hessian.has_preconditioner(name):
      return {}  # No diagonal preconditioner (muon, lion, ...).
    try:
      nu = hessian.find_second_moment(state.opt_state)[0]
    except ValueError:
      if name is None:
        return {}  # Not an adaptive optimizer.
      nu = state.step  # Adafactor: a factored moment, no nu; its step count.
    if not any(bool(jnp.any(n)) for n in jax.tree.leaves(nu)):
      return {}  # nu = 0 before the first update (soap: its first call too).
    value, info = hessian.preconditioned_sharpness(
        op, state.opt_state, b2=self.b2, eps=self.eps, optimizer=name,
        hyper=hyper, params=state.params,
        num_iters=self.num_iters, tol=self.tol, key=key,
        init_vector=self._start('preconditioned', state.params, key),
        min_iters=self.min_iters, return_info=True)
    self._previous['preconditioned'] = ravel_pytree(info['eigvec'])[0]
    return {'preconditioned_sharpness': value,
            'preconditioned_sharpness_hvps': info['num_hvps']}


# ---------------------------------------------------------------------------
# Lazy vs rich: how far the NTK moves.


class NTKProbe(Probe):
  """Logs NTK statistics on a fixed probe set every ``every`` steps.

  Returns ``ntk_top_eig`` (largest eigenvalue of the traced kernel),
  ``ntk_trace``, ``ntk_alignment`` (centered alignment with the probe
  labels), ``ntk_distance_init`` (kernel distance to the kernel at
  initialization, the first call at step 0) and ``ntk_velocity`` (kernel
  distance to the previous call's kernel, per step elapsed; 0 at the first
  call).

  The kernel at initialization and the previous ``(step, kernel)`` are the
  probe's saved state: after a resume, ``ntk_distance_init`` is still
  measured from the initialization and ``ntk_velocity`` continues. A probe
  first called after step 0 (turned on at a resume, or in a branch) has no
  kernel at initialization: it warns, and logs ``ntk_distance_restart``, the
  distance to the kernel at its first call, with ``ntk_restarted_at``, that
  step -- never a distance from another step under the name
  ``ntk_distance_init``.

  Args:
    every: the period.
    num_examples: the probe set's size: the first examples of ``batches``.
    batches: the batches they are taken from, or a function of the run
      returning them (default: the run's held-out probe batches, as many as
      ``num_examples`` needs).
    name: the key of the probe's state in checkpoints.
  """

  def __init__(self, every: int, *, num_examples: int = 64,
               batches: Optional[BatchSource] = None, name: str = 'ntk'):
    _check_count('every', every)
    _check_count('num_examples', num_examples)
    self.every, self.num_examples, self.name = every, num_examples, name
    self._batches = None if batches is None else _Batches(batches)
    # Kernels are kept in the dtype they were computed in (saved as is).
    self._init: Optional[np.ndarray] = None
    self._init_step = 0
    self._prev: Optional[Tuple[int, np.ndarray]] = None
    self._run, self._apply_fn = None, None

  def state_dict(self) -> Dict[str, Any]:
    """The reference kernel (at initialization) with its step, and the
    previous ``(step, kernel)``."""
    if self._init is None:
      return {}
    return {'init': self._init, 'init_step': self._init_step,
            'prev_step': int(self._prev[0]), 'prev': self._prev[1]}

  def load_state_dict(self, saved: Mapping[str, Any]) -> None:
    """Restores what `state_dict` saved (on resume)."""
    self._init = np.asarray(saved['init'])
    self._init_step = int(saved.get('init_step', 0))  # Older checkpoints: 0.
    self._prev = (int(saved['prev_step']), np.asarray(saved['prev']))

  def _probe_set(self, run: runs.Run):
    if self._batches is not None:
      batches = self._batches(run)
    else:
      per_batch = max(1, int(run.dataset.batch_size))
      batches = run.probe_batches(math.ceil(self.num_examples / per_batch))
    return ntk_lib.probe_examples(batches, self.num_examples)

  def __call__(self, state: TrainState, run: runs.Run) -> Dict[str, float]:
    inputs, targets = self._probe_set(run)
    if self._apply_fn is None or state.model_state or run is not self._run:
      # Stateless models keep one apply_fn, hence one compilation, for the run.
      self._run, self._apply_fn = run, run.apply_fn(state.model_state)
    apply_fn = self._apply_fn
    ntk = np.asarray(jax.device_get(
        ntk_lib.empirical_ntk(apply_fn, state.params, jnp.asarray(inputs))))
    k = ntk_lib.output_size(apply_fn, state.params, jnp.asarray(inputs))
    step = int(state.step)
    if self._init is None:
      self._init, self._init_step = ntk, step
      if step > 0:
        warnings.warn(
            f'NTKProbe {self.name!r}: no kernel at initialization (first '
            f'called at step {step}: turned on at a resume, or a branch); '
            f'logging ntk_distance_restart, the distance from the kernel at '
            f'step {step}, instead of ntk_distance_init', stacklevel=2)
    velocity = 0.0
    if self._prev is not None and step > self._prev[0]:
      velocity = (ntk_lib.kernel_distance_np(self._prev[1], ntk)
                  / (step - self._prev[0]))
    self._prev = (step, ntk)
    ntk_f64 = ntk.astype(np.float64)
    distance = ntk_lib.kernel_distance_np(self._init, ntk)
    out = {
        'ntk_top_eig': float(np.linalg.eigvalsh(ntk_f64)[-1]),
        'ntk_trace': float(np.trace(ntk_f64)),
        'ntk_alignment': float(ntk_lib.kernel_alignment(ntk_f64, targets,
                                                        num_classes=k)),
        'ntk_velocity': velocity,
    }
    if self._init_step == 0:
      out['ntk_distance_init'] = distance
    else:
      out.update(ntk_distance_restart=distance,
                 ntk_restarted_at=float(self._init_step))
    return out
