r"""The training Jacobian :math:`J = \partial\theta_T / \partial\theta_0` of a whole run.

Following Belrose & Scherlis, "Understanding Gradient Descent through the
Training Jacobian" (2024): with the data order and every random draw fixed,
training is a deterministic map :math:`\theta_0 \mapsto \theta_T`; its Jacobian
says which directions of the initialization training amplifies
(:math:`\sigma > 1`), contracts (:math:`\sigma < 1`) or leaves alone (the
*bulk*, :math:`\sigma \approx 1`).

* `make_train_fn(run)` replays `dynamics.step.train_step` in a ``lax.scan``
  (`dynamics.replay.scan_train`; ``jax.checkpoint`` on every step and on
  segments of ``checkpoint_every`` steps, so reverse mode stores ~``T / S +
  S`` states, not every activation) and returns ``(train_fn, params_0)``.
  The run is a `dynamics.runs.Run`: ``Run(config)`` or ``Run.open(workdir)``.
* `training_jacobian_fn(train_fn, params_0=...)` returns ``(jvp, vjp)``: ``J v`` by
  forward mode (about two training runs of work), ``J^T u`` by reverse mode.
* `training_jacobian(...)` is the dense ``P x P`` Jacobian (``vmap`` of ``jvp``
  over chunks of basis vectors; for models up to ~5,000 parameters).
* `training_jacobian_svd(..., k)` gives the top and bottom singular triplets by
  Lanczos on :math:`J^\top J` for larger models.

Randomness must be fixed: a ``train_fn`` whose two traces differ (NumPy
randomness drawn at trace time, a key made from the clock) or that uses
stateful RNG primitives is refused with an explanation.

Modules: `training` (the run as a function, the determinism check), `products`
(J v, J^T u, dense J, SVD, the bulk split) and `report` (`analyze_run`).

Command: ``python -m analysis.jacobian --config=configs/jacobian.py`` writes the
singular-value spectrum (JSON + PNG), its split into bulk / amplified /
contracted subspaces (thresholds ``--bulk_tol``) and the overlap of those
subspaces with the top Hessian eigenvectors at the end of training.
"""

from analysis.jacobian.products import (TrainingJacobian, TrainingSVD,
                                        spectrum_split, training_jacobian,
                                        training_jacobian_fn,
                                        training_jacobian_svd)
from analysis.jacobian.report import analyze_run
from analysis.jacobian.training import (RandomnessNotFixedError,
                                      check_deterministic, make_train_fn,
                                      unroll)

__all__ = [
    'RandomnessNotFixedError', 'TrainingJacobian', 'TrainingSVD',
    'analyze_run', 'check_deterministic', 'make_train_fn', 'spectrum_split',
    'training_jacobian', 'training_jacobian_fn', 'training_jacobian_svd',
    'unroll',
]
