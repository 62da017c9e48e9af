"""Stable-SPAM: adaptive spike clipping, adaptive gradient-norm scaling, Adam
with periodic momentum reset (Huang et al., 2025).

The semantics follow the authors' released PyTorch ``StableSPAM`` optimizer.
Where that code and the paper differ, this module follows the code:

* **One step counter for everything.** The code keeps a single per-parameter
  ``step`` that drives the bias corrections of AdaClip, AdaGN and Adam, and sets
  it back to 1 at each reset. The AdaClip and AdaGN running averages are *not*
  reset, so right after a reset their bias corrections restart while their
  averages do not: the clip threshold is inflated by ``1 / (1 - theta**2)`` on
  the next step and relaxes back over ~``1 / (1 - theta)`` steps.
* **The reset step still uses the old moments.** At a step ``t`` with
  ``t % reset_interval == 0`` the code rebinds fresh zero moments in the state
  but updates (and steps with) the moments it already held, now bias-corrected
  as if at step 1. The stored moments after that step are zeros and the next
  step is bias-corrected as step 2. The paper describes zeroing the moments
  before the update.
* **The beta1 decay also scales gamma1.** With ``beta1_decay_steps=T`` (the
  code's ``total_T``), ``s_t = m + (1 - m)(1 + cos(pi t / (T + 1))) / 2``
  multiplies both ``b1`` and ``gamma1``; each bias correction uses the current
  scaled decay, ``1 - (b1 s_t)^k``.

:func:`reference_steps` gives the bias-correction step of each piece as a
closed form of the global step, so each piece's state is only its own
averages and a counter; the pieces chain like ``optax.adamw``'s.
"""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics.optim.adamp import (ScalarOrSchedule, check_learning_rate,
                                  check_nonnegative, check_unit_interval)

from dynamics.types import PyTree


def _FLOAT():
  # The default float (float64 under jax_enable_x64) for counters and scalars.
  return jnp.result_type(float)


def _stat_dtype(leaves) -> jnp.dtype:
  # Per-tensor statistics are kept in at least float32, even for bf16 params.
  dtype = jnp.dtype(jnp.float32)
  for leaf in leaves:
    dtype = jnp.promote_types(dtype, leaf.dtype)
  return dtype


# Tensors up to this many entries are reduced together with the others of the
# same shape and dtype (one kernel per group instead of one per tensor); larger
# ones, where a kernel's fixed cost no longer matters, are reduced on their own
# rather than copied into a stack.
_GROUP_MAX_SIZE = 1 << 16


def _per_tensor_reduce(leaves, reduce_rows, dtype) -> jax.Array:
  """``[reduce(leaf) for leaf in leaves]`` as a ``(len(leaves),)`` vector.

  ``reduce_rows(x)`` reduces each row of a 2-D ``x`` to one value. Small
  tensors of equal shape and dtype are stacked and reduced in one kernel:
  with per-tensor statistics, the per-kernel fixed cost is what a small model's
  optimizer step pays for (27k parameters in 28 tensors: about half the cost).
  """
  groups = {}
  for i, leaf in enumerate(leaves):
    key = (leaf.shape, leaf.dtype) if leaf.size <= _GROUP_MAX_SIZE else i
    groups.setdefault(key, []).append(i)
  order = [i for idx in groups.values() for i in idx]
  values = jnp.concatenate([
      reduce_rows(jnp.stack([leaves[i].reshape(-1) for i in idx])).astype(dtype)
      for idx in groups.values()])
  if order == sorted(order):
    return values
  return values[np.argsort(order)]   # Back to leaf order: one gather.


def _per_tensor_zeros(params) -> jax.Array:
  """One statistic per parameter tensor, as a vector in ``jax.tree.leaves`` order.

  A vector rather than a pytree of scalars: the per-tensor scalar arithmetic
  (running averages, bias corrections, thresholds) is then one fused kernel
  for the whole model instead of several tiny ones per tensor, which is what
  dominated the step of small models.
  """
  leaves = jax.tree.leaves(params)
  return jnp.zeros((len(leaves),), _stat_dtype(leaves))


def reference_steps(count: jax.Array, reset_interval: Optional[int]
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Bias-correction steps of the reference at global step ``count`` (1-based).

  Args:
    count: global number of updates including the current one (int array).
    reset_interval: reset period, or ``None`` for never.

  Returns:
    ``(k_clip, k_adam, is_reset)``: the step seen by AdaClip/AdaGN, the one seen
    by Adam, and whether ``count`` is a reset step. Before the first reset both
    are ``count``; after a reset at ``r`` the counter was set to 1, so step
    ``count`` sees ``count - r + 1``; at a reset step Adam sees 1.
  """
  if reset_interval is None:
    return count, count, jnp.zeros([], bool)
  last_reset = ((count - 1) // reset_interval) * reset_interval
  k_clip = jnp.where(last_reset == 0, count, count - last_reset + 1)
  is_reset = count % reset_interval == 0
  k_adam = jnp.where(is_reset, 1, k_clip)
  return k_clip, k_adam, is_reset


def beta1_scale(count: jax.Array, decay_steps: Optional[int],
                decay_min: float) -> jax.Array:
  """The reference's cosine factor on ``b1`` and ``gamma1`` (1 when off)."""
  if decay_steps is None:
    return jnp.ones([], _FLOAT())
  t = count.astype(_FLOAT())
  cosine = (1 + jnp.cos(math.pi * t / (decay_steps + 1))) / 2
  return decay_min + (1 - decay_min) * cosine


# ----------------------------------------------------------------------------
# AdaClip.


class ScaleByAdaClipState(NamedTuple):
  """State of :func:`scale_by_ada_clip`.

  Attributes:
    count: global number of updates (int32).
    max_ema: EMA of ``max |g|``, one entry per parameter tensor in
      ``jax.tree.leaves`` order (shape ``(num_tensors,)``).
  """
  count: jax.Array
  max_ema: jax.Array


def scale_by_ada_clip(theta: float = 0.999,
                      reset_interval: Optional[int] = 1000
                      ) -> optax.GradientTransformation:
  r"""AdaClip: clip entries above a running threshold of the tensor's max.

  Per parameter tensor, with :math:`k` from :func:`reference_steps`:

  .. math::
    M_t = \max_i |g_i|,\quad
    m_t = \theta m_{t-1} + (1-\theta) M_t,\quad
    \hat m_t = \frac{m_t}{1-\theta^k},\qquad
    g_i \leftarrow \begin{cases} g_i\,\hat m_t / M_t & |g_i| > \hat m_t\\
                                 g_i & \text{otherwise.}\end{cases}

  The largest entry is thus mapped exactly onto the threshold and the other
  clipped ones in proportion.

  Args:
    theta: threshold decay in [0, 1).
    reset_interval: momentum-reset period (restarts the bias correction), or
      ``None``.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByAdaClipState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_ada_clip(theta=0.5)
    >>> g, state = tx.update(jnp.ones(3), tx.init(jnp.ones(3)))
    >>> g, _ = tx.update(jnp.array([1., 1., 1000.]), state)
    >>> round(float(g[2]), 2)  # threshold (0.5 * 0.5 + 0.5 * 1000) / 0.75
    667.0

  References:
    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
    Adam", 2025. https://arxiv.org/abs/2502.17055
  """

  def init_fn(params):
    return ScaleByAdaClipState(count=jnp.zeros([], jnp.int32),
                               max_ema=_per_tensor_zeros(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, ScaleByAdaClipState(count=count, max_ema=state.max_ema)
    k_clip, _, _ = reference_steps(count, reset_interval)
    dtype = state.max_ema.dtype
    correction = 1 - theta**k_clip.astype(dtype)
    g_max = _per_tensor_reduce(
        leaves, lambda x: jnp.max(jnp.abs(x), axis=1), dtype)
    max_ema = theta * state.max_ema + (1 - theta) * g_max
    threshold = max_ema / correction
    ratio = threshold / jnp.where(g_max > 0, g_max, 1.0)
    clipped = [jnp.where(jnp.abs(g) > threshold[i], (g * ratio[i]).astype(g.dtype), g)
               for i, g in enumerate(leaves)]
    return (treedef.unflatten(clipped),
            ScaleByAdaClipState(count=count, max_ema=max_ema))

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# AdaGN.


class ScaleByAdaGNState(NamedTuple):
  """State of :func:`scale_by_ada_gn`.

  Attributes:
    count: global number of updates (int32).
    norm_mu: EMA of each tensor's gradient norm (shape ``(num_tensors,)``,
      ``jax.tree.leaves`` order).
    norm_nu: EMA of each tensor's squared gradient norm (likewise).
  """
  count: jax.Array
  norm_mu: jax.Array
  norm_nu: jax.Array


def scale_by_ada_gn(gamma1: float = 0.7, gamma2: float = 0.9,
                    eps: float = 1e-8, reset_interval: Optional[int] = 1000,
                    beta1_decay_steps: Optional[int] = None,
                    beta1_decay_min: float = 0.5) -> optax.GradientTransformation:
  r"""AdaGN: rescale each tensor's gradient to a running norm estimate.

  Per parameter tensor, with :math:`\gamma_1' = \gamma_1 s_t`
  (:func:`beta1_scale`) and :math:`k` from :func:`reference_steps`:

  .. math::
    n_t = \|g\|_2,\quad
    a_t = \gamma_1' a_{t-1} + (1-\gamma_1') n_t,\quad
    b_t = \gamma_2 b_{t-1} + (1-\gamma_2) n_t^2,\\
    g \leftarrow \frac{g}{n_t}\;
      \frac{a_t / (1-\gamma_1'^{\,k})}{\sqrt{b_t/(1-\gamma_2^k)} + \epsilon}
    \quad (\text{unchanged if } n_t = 0).

  Args:
    gamma1: decay of the norm's first moment, in [0, 1).
    gamma2: decay of the norm's second moment, in [0, 1).
    eps: added to the root second moment.
    reset_interval: momentum-reset period (restarts the bias correction).
    beta1_decay_steps: ``T`` of the cosine factor on ``gamma1`` (None: off).
    beta1_decay_min: final value of that factor.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByAdaGNState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_ada_gn()
    >>> g, _ = tx.update(jnp.array([3., 4.]), tx.init(jnp.zeros(2)))
    >>> [round(float(x), 4) for x in g]  # first step: unit norm
    [0.6, 0.8]

  References:
    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
    Adam", 2025. https://arxiv.org/abs/2502.17055
  """

  def init_fn(params):
    return ScaleByAdaGNState(count=jnp.zeros([], jnp.int32),
                             norm_mu=_per_tensor_zeros(params),
                             norm_nu=_per_tensor_zeros(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state._replace(count=count)
    k_clip, _, _ = reference_steps(count, reset_interval)
    dtype = state.norm_mu.dtype
    k = k_clip.astype(dtype)
    g1 = (gamma1 * beta1_scale(count, beta1_decay_steps, beta1_decay_min)).astype(dtype)
    n = jnp.sqrt(_per_tensor_reduce(
        leaves, lambda x: jnp.sum(jnp.square(x.astype(dtype)), axis=1), dtype))
    a = g1 * state.norm_mu + (1 - g1) * n
    b = gamma2 * state.norm_nu + (1 - gamma2) * n * n
    target = (a / (1 - g1**k)) / (jnp.sqrt(b / (1 - gamma2**k)) + eps)
    factor = jnp.where(n > 0, target / jnp.where(n > 0, n, 1.0), 1.0)
    out = [(g * factor[i]).astype(g.dtype) for i, g in enumerate(leaves)]
    return treedef.unflatten(out), ScaleByAdaGNState(count=count, norm_mu=a,
                                                     norm_nu=b)

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Adam with momentum reset.


class ScaleByAdamWithResetState(NamedTuple):
  """State of :func:`scale_by_adam_with_reset`.

  Attributes:
    count: global number of updates (int32).
    mu: first moment (zeros right after a reset step).
    nu: second moment (zeros right after a reset step).
  """
  count: jax.Array
  mu: PyTree
  nu: PyTree


def scale_by_adam_with_reset(b1: float = 0.9, b2: float = 0.999,
                             eps: float = 1e-8,
                             reset_interval: Optional[int] = 1000,
                             beta1_decay_steps: Optional[int] = None,
                             beta1_decay_min: float = 0.5
                             ) -> optax.GradientTransformation:
  r"""Adam whose moments are zeroed every ``reset_interval`` steps.

  With :math:`\beta_1' = \beta_1 s_t` (:func:`beta1_scale`) and :math:`k` the
  Adam step of :func:`reference_steps`:

  .. math::
    m = \beta_1' m_{t-1} + (1-\beta_1') g,\quad
    v = \beta_2 v_{t-1} + (1-\beta_2) g^2,\quad
    u = \frac{1}{1-\beta_1'^{\,k}}\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^k}+\epsilon},

  and :math:`(m_t, v_t) = (0, 0)` if :math:`t` is a multiple of
  ``reset_interval``, else :math:`(m, v)` (the reference's order: the reset
  step itself still steps with ``m, v`` at :math:`k = 1`).

  Args:
    b1, b2: moment decays in [0, 1).
    eps: Adam's epsilon.
    reset_interval: reset period (>= 1), or ``None`` for never.
    beta1_decay_steps: ``T`` of the cosine factor on ``b1`` (None: off).
    beta1_decay_min: final value of that factor.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByAdamWithResetState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_adam_with_reset(reset_interval=1)
    >>> u, state = tx.update(jnp.ones(1), tx.init(jnp.ones(1)))
    >>> float(state.mu[0])  # every step is a reset step
    0.0

  References:
    Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM
    Training", ICLR 2025. https://arxiv.org/abs/2501.06842
  """

  def init_fn(params):
    return ScaleByAdamWithResetState(count=jnp.zeros([], jnp.int32),
                                     mu=optax.tree.zeros_like(params),
                                     nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    _, k_adam, is_reset = reference_steps(count, reset_interval)
    k = k_adam.astype(_FLOAT())
    beta1 = b1 * beta1_scale(count, beta1_decay_steps, beta1_decay_min)
    bc1 = 1 - beta1**k
    sqrt_bc2 = jnp.sqrt(1 - b2**k)
    mu = jax.tree.map(lambda m, g: (beta1 * m + (1 - beta1) * g).astype(m.dtype),
                      state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    out = jax.tree.map(
        lambda m, v: (m / (jnp.sqrt(v) / sqrt_bc2 + eps) / bc1).astype(m.dtype),
        mu, nu)
    keep = lambda x: jnp.where(is_reset, jnp.zeros_like(x), x)
    return out, ScaleByAdamWithResetState(count=count, mu=jax.tree.map(keep, mu),
                                          nu=jax.tree.map(keep, nu))

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# The optimizer.


def stable_spam(learning_rate: ScalarOrSchedule, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                gamma1: float = 0.7, gamma2: float = 0.9, theta: float = 0.999,
                reset_interval: Optional[int] = 1000,
                beta1_decay_steps: Optional[int] = None,
                beta1_decay_min: float = 0.5, *,
                weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""Stable-SPAM: AdaClip, then AdaGN, then Adam with momentum reset.

  Per parameter tensor, at global step :math:`t`:

  .. math::
    \tilde g &= \mathrm{AdaClip}_\theta(g_t)
      \quad(\text{entries above } \hat m^{\max}_t \text{ rescaled by }
      \hat m^{\max}_t/\max|g_t|),\\
    \bar g &= \tilde g\,\frac{\hat a_t}{\|\tilde g\|(\sqrt{\hat b_t}+\epsilon)}
      \quad(\text{AdaGN, norm moments } \gamma_1, \gamma_2),\\
    w_{t+1} &= w_t - \eta_t\Big(\frac{1}{1-\beta_1^k}
      \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^k}+\epsilon} + \lambda w_t\Big),

  with Adam moments of :math:`\bar g` zeroed every ``reset_interval`` steps
  and bias corrections restarted (see the module docstring for the exact order,
  which follows the authors' code).

  Args:
    learning_rate: :math:`\eta`, float >= 0 or optax schedule.
    b1, b2: Adam moment decays in [0, 1).
    eps: epsilon of Adam and AdaGN.
    weight_decay: decoupled weight decay :math:`\lambda` >= 0 (times
      :math:`\eta_t`).
    gamma1, gamma2: AdaGN moment decays in [0, 1).
    theta: AdaClip threshold decay in [0, 1).
    reset_interval: momentum-reset period >= 1 (``None``: never).
    beta1_decay_steps: the code's ``total_T``: cosine-decay ``b1`` and
      ``gamma1`` by a factor going from 1 to ``beta1_decay_min`` over this many
      steps (``None``: off).
    beta1_decay_min: the code's ``eta_min``, in [0, 1].
    weight_decay_mask: pytree of bools or function of params (``None``: decay
      all, as the reference).

  Returns:
    An ``optax.GradientTransformation``: ``chain(scale_by_ada_clip,
    scale_by_ada_gn, scale_by_adam_with_reset, add_decayed_weights,
    scale_by_learning_rate)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {'w': jnp.ones(3)}
    >>> tx = stable_spam(1e-2, reset_interval=100)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p['w'] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> [round(float(x), 4) for x in optax.apply_updates(params, updates)['w']]
    [0.99, 0.99, 0.99]

  References:
    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit
    Adam", 2025. https://arxiv.org/abs/2502.17055
  """
  check_learning_rate(learning_rate)
  for name, value in (('b1', b1), ('b2', b2), ('gamma1', gamma1),
                      ('gamma2', gamma2), ('theta', theta)):
    check_unit_interval(name, value)
  check_unit_interval('beta1_decay_min', beta1_decay_min, closed=True)
  check_nonnegative('eps', eps)
  check_nonnegative('weight_decay', weight_decay)
  if reset_interval is not None and (int(reset_interval) != reset_interval
                                     or reset_interval < 1):
    raise ValueError(
        f'reset_interval must be an integer >= 1 or None, got {reset_interval}')
  if beta1_decay_steps is not None and beta1_decay_steps < 1:
    raise ValueError(
        f'beta1_decay_steps must be >= 1 or None, got {beta1_decay_steps}')
  reset_interval = None if reset_interval is None else int(reset_interval)
  return optax.chain(
      scale_by_ada_clip(theta, reset_interval),
      scale_by_ada_gn(gamma1, gamma2, eps, reset_interval, beta1_decay_steps,
                      beta1_decay_min),
      scale_by_adam_with_reset(b1, b2, eps, reset_interval, beta1_decay_steps,
                               beta1_decay_min),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


__all__ = ['ScaleByAdaClipState', 'ScaleByAdaGNState', 'ScaleByAdamWithResetState',
           'beta1_scale', 'reference_steps', 'scale_by_ada_clip', 'scale_by_ada_gn',
           'scale_by_adam_with_reset', 'stable_spam']
