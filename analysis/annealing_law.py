r"""The scaling law with learning-rate annealing (Tissue et al., 2024).

The loss after ``s`` updates is modelled as

.. math::
  L(s) = L_0 + A\, S_1(s)^{-\alpha} - C\, S_2(s), \qquad
  S_1(s) = \sum_{i=1}^{s} \eta_i, \qquad S_2(s) = \sum_{i=1}^{s} m_i,

  m_i = \lambda\, m_{i-1} + (\eta_{i-1} - \eta_i), \quad m_0 = 0,

where :math:`\eta_i` is the learning rate of update ``i`` (``schedule(i - 1)``
in optax's convention), :math:`S_1` the forward area and :math:`S_2` the
annealing area, with :math:`\lambda \approx 0.999` a fixed (not fitted)
parameter. Conventions chosen here: :math:`\eta_0 = \eta_1` (no annealing
before the first update), and the initial warmup (the leading stretch where
the rate rises) counts in :math:`S_1` only; later rises (WSD-S resuming the
stable phase) count in :math:`S_2` with their negative sign, so the law
predicts the loss going back up.

Fitting is linear in :math:`(L_0, A, C)` for a fixed :math:`\alpha`, so
:func:`fit` profiles :math:`\alpha` (grid, then bounded Brent) and polishes all
four parameters jointly with Levenberg-Marquardt.

References:
  Tissue et al., "Scaling Law with Learning Rate Annealing", 2024
  (arXiv:2408.11029).
"""

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import optimize, signal

if TYPE_CHECKING:  # Imported by use only: this module loads without JAX.
  from dynamics import runs

DEFAULT_LAMBDA = 0.999


class LawParams(NamedTuple):
  """Parameters of :math:`L = L_0 + A S_1^{-\\alpha} - C S_2`."""
  L0: float
  A: float
  alpha: float
  C: float


class Curve(NamedTuple):
  """One run's loss curve and its full learning-rate schedule.

  Attributes:
    steps: int array ``(n,)``, number of updates done at each loss point.
    losses: float array ``(n,)``, the observed losses.
    lrs: float array ``(T,)`` with ``T >= max(steps)``; ``lrs[i]`` is the rate
      of update ``i + 1`` (``schedule(i)``).
    name: label for plots and tables.
  """
  steps: np.ndarray
  losses: np.ndarray
  lrs: np.ndarray
  name: str = ''


def annealing_areas(lrs: np.ndarray, lam: float = DEFAULT_LAMBDA
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Forward area ``S1`` and annealing area ``S2`` after each update.

  Args:
    lrs: ``(T,)`` learning rate of updates ``1..T``.
    lam: the momentum :math:`\\lambda` of the annealing area, in [0, 1).

  Returns:
    ``(S1, S2)``, each ``(T,)``; entry ``s - 1`` is the area after ``s``
    updates.
  """
  if not 0.0 <= lam < 1.0:
    raise ValueError(f'lam must be in [0, 1), got {lam}')
  eta = np.asarray(lrs, np.float64)
  if eta.ndim != 1 or eta.size == 0:
    raise ValueError(f'lrs must be a non-empty 1-D array, got shape {eta.shape}')
  delta = np.concatenate([[0.0], eta[:-1] - eta[1:]])  # eta_0 := eta_1.
  falling = np.nonzero(delta[1:] >= 0)[0]
  warmup_end = falling[0] + 1 if falling.size else eta.size
  delta[:warmup_end] = 0.0
  momentum = signal.lfilter([1.0], [1.0, -lam], delta)
  return np.cumsum(eta), np.cumsum(momentum)


def _areas_at(curve: Curve, lam: float) -> tuple[np.ndarray, np.ndarray]:
  steps = np.asarray(curve.steps, np.int64)
  if steps.min() < 1 or steps.max() > len(curve.lrs):
    raise ValueError(f'curve {curve.name!r}: steps must lie in [1, '
                     f'{len(curve.lrs)}] (the updates with a learning rate), '
                     f'got [{steps.min()}, {steps.max()}]')
  s1, s2 = annealing_areas(curve.lrs, lam)
  return s1[steps - 1], s2[steps - 1]


def law(params: LawParams, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
  """:math:`L_0 + A S_1^{-\\alpha} - C S_2`."""
  return params.L0 + params.A * np.power(s1, -params.alpha) - params.C * s2


def predict(params: LawParams, lrs: np.ndarray, steps: np.ndarray,
            lam: float = DEFAULT_LAMBDA) -> np.ndarray:
  """Predicted loss after each of ``steps`` updates of the schedule ``lrs``.

  Example:
    >>> p = LawParams(L0=2.0, A=0.5, alpha=0.5, C=100.0)
    >>> lrs = np.full(100, 1e-2)
    >>> round(float(predict(p, lrs, np.array([100]))[0]), 9)  # 2 + 0.5 / 1.
    2.5
  """
  curve = Curve(np.asarray(steps), np.zeros(len(steps)), np.asarray(lrs))
  return law(params, *_areas_at(curve, lam))


def fit(curves: Sequence[Curve], lam: float = DEFAULT_LAMBDA,
        min_step: int = 1, alpha_bounds: tuple[float, float] = (1e-3, 5.0)
        ) -> LawParams:
  """Least-squares fit of ``(L0, A, alpha, C)`` to one or more loss curves.

  Args:
    curves: the runs to fit (typically one constant-rate and one decaying).
    lam: the fixed :math:`\\lambda` of the annealing area.
    min_step: ignore loss points before this step (the early transient that
      no power law describes).
    alpha_bounds: search interval for :math:`\\alpha`.

  Returns:
    The fitted :class:`LawParams`.
  """
  s1s, s2s, ys = [], [], []
  for c in curves:
    s1, s2 = _areas_at(c, lam)
    keep = np.asarray(c.steps) >= min_step
    s1s.append(s1[keep]), s2s.append(s2[keep])
    ys.append(np.asarray(c.losses, np.float64)[keep])
  s1, s2, y = map(np.concatenate, (s1s, s2s, ys))
  if y.size < 4:
    raise ValueError(f'need at least 4 loss points at steps >= {min_step} to '
                     f'fit 4 parameters, got {y.size}')

  def linear_part(alpha):
    design = np.stack([np.ones_like(s1), np.power(s1, -alpha), -s2], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef, np.sum((design @ coef - y) ** 2)

  grid = np.geomspace(*alpha_bounds, 200)
  best = int(np.argmin([linear_part(a)[1] for a in grid]))
  lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  alpha = optimize.minimize_scalar(lambda a: linear_part(a)[1], bounds=(lo, hi),
                                   method='bounded',
                                   options={'xatol': 1e-12}).x
  (l0, a, c), _ = linear_part(alpha)

  def residuals(theta):
    return law(LawParams(*theta), s1, s2) - y

  polished = optimize.least_squares(residuals, [l0, a, alpha, c], method='lm',
                                    xtol=1e-15, ftol=1e-15, gtol=1e-15)
  return LawParams(*(float(v) for v in polished.x))


def prediction_error(params: LawParams, curve: Curve,
                     lam: float = DEFAULT_LAMBDA) -> dict[str, float]:
  """Mean and max absolute relative error, and the error at the last point."""
  pred = predict(params, curve.lrs, curve.steps, lam)
  rel = np.abs(pred - curve.losses) / np.abs(curve.losses)
  return {'mean_rel_error': float(rel.mean()), 'max_rel_error': float(rel.max()),
          'final_rel_error': float(rel[-1])}


def curve_from_metrics(records: Sequence[dict], key: str = 'eval_loss',
                       lrs: np.ndarray | None = None, name: str = '') -> Curve:
  """The loss curve ``key`` of logged metric lines (``{'step', key, ...}``).

  Without ``lrs`` the per-update rates are interpolated linearly from the
  logged ``learning_rate`` (exact for piecewise-linear schedules between
  logged steps only).

  Args:
    records: the metric lines, e.g. ``run.metrics()``.
    key: the metric to fit ('eval_loss' or 'train_loss').
    lrs: optional ``(T,)`` rates of updates ``1..T``.
    name: label for plots and tables.

  Returns:
    A :class:`Curve`.
  """
  points = [(r['step'], r[key]) for r in records if key in r and r['step'] >= 1]
  if not points:
    raise ValueError(f'{name or "metrics"}: no {key!r} logged at a step >= 1')
  steps, losses = map(np.asarray, zip(*points))
  last = int(steps.max())
  if lrs is None:
    logged = [(r['step'], r['learning_rate']) for r in records
              if 'learning_rate' in r]
    if not logged:
      raise ValueError(f'{name or "metrics"}: no rates given and no logged '
                       'learning_rate')
    # The line at step s logs the rate of update s, i.e. lrs[s - 1].
    at, values = map(np.asarray, zip(*logged))
    lrs = np.interp(np.arange(1, last + 1), at, values)
  return Curve(steps.astype(np.int64), losses.astype(np.float64),
               np.asarray(lrs, np.float64), name)


def load_curve(run: 'runs.Run', key: str = 'eval_loss', name: str | None = None,
               lrs: np.ndarray | None = None) -> Curve:
  """A run's logged loss ``key`` with the rates of its recorded schedule.

  Args:
    run: a `dynamics.runs.Run` with metrics (``Run.open(workdir)``).
    key: the metric to fit ('eval_loss' or 'train_loss').
    name: label (default: the run directory's name).
    lrs: optional ``(T,)`` rates of updates ``1..T`` (default: the run's
      schedule, exact).

  Returns:
    A :class:`Curve`.
  """
  from dynamics import schedules  # pylint: disable=g-import-not-at-top
  records = run.metrics()
  if lrs is None:
    last = max((r['step'] for r in records if key in r), default=0)
    # The config's schedule, without building the run's data or model.
    lrs = schedule_values(schedules.from_config(run.config), last)
  name = os.path.basename(run.workdir) if name is None else name
  return curve_from_metrics(records, key, lrs, name)


def schedule_values(schedule, num_updates: int) -> np.ndarray:
  """``schedule(0), ..., schedule(num_updates - 1)`` as float64: the ``lrs``."""
  return np.asarray(schedule(np.arange(num_updates)), np.float64)


def plot_fit(params: LawParams, curves: Sequence[Curve],
             fitted: Sequence[str] = (), lam: float = DEFAULT_LAMBDA, ax=None):
  """Observed losses (dots) against the law's prediction (lines).

  Drawn by `analysis.plots.loss_fit` (the plots live there).

  Args:
    params: fitted parameters.
    curves: runs to show.
    fitted: names of the runs used for fitting (drawn solid; others dashed).
    lam: the :math:`\\lambda` used in the fit.
    ax: matplotlib axes (default: a new figure).

  Returns:
    The matplotlib axes.
  """
  from analysis import plots  # pylint: disable=g-import-not-at-top
  series = []
  for c in curves:
    dense = np.arange(max(1, int(c.steps.min())), int(c.steps.max()) + 1)
    series.append({
        'steps': c.steps, 'losses': c.losses, 'predicted_steps': dense,
        'predicted': predict(params, c.lrs, dense, lam),
        'fitted': c.name in fitted,
        'label': f'{c.name} ({"fit" if c.name in fitted else "predicted"})'})
  title = (f'L0={params.L0:.3f} A={params.A:.3g} alpha={params.alpha:.3f} '
           f'C={params.C:.3g}')
  return plots.loss_fit(series, title, ax)
