"""SGDP and AdamP: momentum optimizers that project out the radial update.

Heo et al. observed that, for a scale-invariant weight (one followed by a
normalization layer), momentum makes the weight norm grow quickly, which shrinks
the effective step size. SGDP/AdamP detect such weights with a cosine test
between the weight and its gradient and, when it fires, remove the radial
component of the update and weaken the weight decay.

The semantics follow the authors' released PyTorch code (``clovaai/AdamP``),
including its exact order of tests and its epsilons. The only layout question is
which axis is a "channel": PyTorch keeps output channels on axis 0, Flax on the
last axis. :func:`flax_projection_axes` gives the mapping used by default:

==========================================  =================================
Parameter (Flax layout)                      channel axes (torch equivalent)
==========================================  =================================
``ndim <= 1`` (norm scales), any ``bias``    never projected (as the reference)
``Dense`` kernel ``(in, out)``               ``(-1,)``  (``Linear`` rows)
``Conv`` kernel ``(h, w, in, out)``          ``(-1,)``  (``Conv2d`` out channels)
``DenseGeneral`` ``(in, *features)``,        the feature axes, e.g. ``qkv``
  named ``qkv`` ``(d, 3, heads, head_dim)``    ``(1, 2, 3)`` (one fused Linear)
``Embed`` ``embedding`` ``(vocab, d)``,      ``(0,)``  (``Embedding`` rows)
  learned ``pos_embed`` ``(len, d)``
``nn.scan``-stacked ``(layers, ...)``        pass ``ProjectionAxes(...,
                                             batch_axes=(0,))``: each layer is
                                             tested and projected on its own
==========================================  =================================

Any other rule is a callable ``(path, leaf) -> ProjectionAxes | None`` passed as
``projection_axes``, in the spirit of ``optax.contrib.muon``'s dimension numbers.
"""

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from dynamics.types import PyTree, param_name
ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]


class ProjectionAxes(NamedTuple):
  """How one parameter is viewed by the cosine test and the projection.

  Attributes:
    channel_axes: axes indexing a channel (the reference's ``x.size(0)``); the
      channel-wise test reduces over every other non-batch axis.
    batch_axes: axes of independent copies (e.g. the layer axis of parameters
      stacked by ``nn.scan``); each copy gets its own test, projection and
      weight-decay ratio.
  """
  channel_axes: tuple[int, ...]
  batch_axes: tuple[int, ...] = ()


ProjectionRule = Callable[[tuple, jax.Array], Optional[ProjectionAxes]]


def flax_projection_axes(path: tuple, leaf: jax.Array) -> Optional[ProjectionAxes]:
  """The default per-parameter rule for Flax Linen parameters (table above)."""
  if leaf.ndim <= 1:
    return None
  names = param_name(path).split('/') if path else []
  last = names[-1] if names else ''
  if last == 'bias':  # DenseGeneral biases are N-D here but 1-D in PyTorch.
    return None
  if last in ('embedding', 'pos_embed'):
    return ProjectionAxes(channel_axes=(0,))
  if last == 'kernel' and len(names) >= 2 and names[-2] == 'qkv':
    return ProjectionAxes(channel_axes=tuple(range(1, leaf.ndim)))
  return ProjectionAxes(channel_axes=(leaf.ndim - 1,))


# ----------------------------------------------------------------------------
# Argument checks shared by the optimizers of this package.


def check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
  """Raises ValueError when ``learning_rate`` (or the schedule at 0) is < 0.

  A traced value (e.g. under ``optax.inject_hyperparams`` inside ``jit``)
  cannot be checked here and is let through.
  """
  value = learning_rate(0) if callable(learning_rate) else learning_rate
  try:
    value = float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return
  if value < 0:
    raise ValueError(f'learning_rate must be >= 0, got {value}')


def check_unit_interval(name: str, value: float, *, closed: bool = False) -> None:
  """Raises ValueError naming ``name`` unless ``0 <= value < 1`` (``<= 1``)."""
  ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
  if not ok:
    interval = '[0, 1]' if closed else '[0, 1)'
    raise ValueError(f'{name} must be in {interval}, got {value}')


def check_nonnegative(name: str, value: float) -> None:
  if value < 0:
    raise ValueError(f'{name} must be >= 0, got {value}')


# ----------------------------------------------------------------------------
# Pieces.


class ScaleByAdamReferenceState(NamedTuple):
  """State of :func:`scale_by_adam_reference`.

  Attributes:
    count: number of updates so far (int32).
    mu: first moment, like params.
    nu: second moment, like params.
  """
  count: jax.Array
  mu: PyTree
  nu: PyTree


def scale_by_adam_reference(b1: float = 0.9, b2: float = 0.999,
                            eps: float = 1e-8,
                            nesterov: bool = False) -> optax.GradientTransformation:
  r"""Adam's direction exactly as ``torch.optim.Adam``/AdamP compute it.

  .. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
    u_t = \frac{1}{1-\beta_1^t}\,
          \frac{\tilde m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon},\quad
    \tilde m_t = \begin{cases} \beta_1 m_t + (1-\beta_1) g_t & \text{nesterov}\\
                                m_t & \text{otherwise.}\end{cases}

  Without Nesterov this is ``optax.scale_by_adam`` up to rounding; with it, the
  reference bias-corrects both terms with :math:`1-\beta_1^t`, which
  ``optax.scale_by_adam(nesterov=True)`` does not, hence this piece.

  Args:
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to the bias-corrected root second moment.
    nesterov: use the reference's Nesterov direction.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByAdamReferenceState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_adam_reference()
    >>> u, _ = tx.update({'w': jnp.ones(2)}, tx.init({'w': jnp.ones(2)}))
    >>> [round(float(x), 4) for x in u['w']]
    [1.0, 1.0]

  References:
    Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
  """

  def init_fn(params):
    return ScaleByAdamReferenceState(
        count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.result_type(float))  # float64 under jax_enable_x64
    bc1 = 1 - b1**t
    sqrt_bc2 = jnp.sqrt(1 - b2**t)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)

    def direction(m, v, g):
      num = b1 * m + (1 - b1) * g if nesterov else m
      return (num / (jnp.sqrt(v) / sqrt_bc2 + eps) / bc1).astype(g.dtype)

    out = jax.tree.map(direction, mu, nu, updates)
    return out, ScaleByAdamReferenceState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


class TraceWithDampeningState(NamedTuple):
  """State of :func:`trace_with_dampening`: the momentum buffer ``trace``."""
  trace: PyTree


def trace_with_dampening(momentum: float = 0.9, dampening: float = 0.0,
                         nesterov: bool = False) -> optax.GradientTransformation:
  r"""SGDP's momentum buffer, as the reference keeps it.

  .. math::
    b_t = \mu b_{t-1} + (1 - \tau) g_t,\qquad
    u_t = \begin{cases} g_t + \mu b_t & \text{nesterov}\\ b_t & \text{otherwise,}
    \end{cases}

  with :math:`b_0 = 0` (so, unlike ``torch.optim.SGD``, the first step is also
  dampened). With ``dampening=0`` this is ``optax.trace``.

  Args:
    momentum: :math:`\mu`, in [0, 1).
    dampening: :math:`\tau`, in [0, 1].
    nesterov: use the Nesterov direction.

  Returns:
    An ``optax.GradientTransformation`` with :class:`TraceWithDampeningState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = trace_with_dampening(0.9, dampening=0.5)
    >>> u, _ = tx.update(jnp.ones(1), tx.init(jnp.ones(1)))
    >>> float(u[0])
    0.5

  References:
    Sutskever et al., "On the importance of initialization and momentum in deep
    learning", ICML 2013.
  """

  def init_fn(params):
    return TraceWithDampeningState(trace=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    trace = jax.tree.map(lambda b, g: momentum * b + (1 - dampening) * g,
                         state.trace, updates)
    if nesterov:
      out = jax.tree.map(lambda g, b: g + momentum * b, updates, trace)
    else:
      out = trace
    return out, TraceWithDampeningState(trace=trace)

  return optax.GradientTransformation(init_fn, update_fn)


def _project_leaf(u, g, p, axes: Optional[ProjectionAxes], delta, wd_ratio, eps):
  """Projected update and weight-decay ratio of one parameter (reference rule)."""
  if axes is None:
    return u, jnp.ones((), u.dtype)
  ndim = p.ndim
  channel = tuple(a % ndim for a in axes.channel_axes)
  batch = tuple(a % ndim for a in axes.batch_axes)
  rest = tuple(a for a in range(ndim) if a not in channel and a not in batch)
  if len(channel) + len(rest) <= 1:  # ndim <= 1 once batch axes are removed
    return u, jnp.ones([1 if a not in batch else p.shape[a] for a in range(ndim)],
                       u.dtype)
  n_rest = math.prod(p.shape[a] for a in rest)
  n_layer = n_rest * math.prod(p.shape[a] for a in channel)

  # Per-channel sums; layer sums are sums of them (one pass over the tensor).
  def csum(x):
    return jnp.sum(x, axis=rest, keepdims=True)

  gp_c, gg_c, pp_c, pu_c = csum(g * p), csum(g * g), csum(p * p), csum(p * u)

  def lsum(x):
    return jnp.sum(x, axis=channel, keepdims=True)

  gp_l, gg_l, pp_l, pu_l = lsum(gp_c), lsum(gg_c), lsum(pp_c), lsum(pu_c)

  def cosine(gp, gg, pp):
    # torch.nn.functional.cosine_similarity clamps each norm at eps.
    return jnp.abs(gp) / (jnp.maximum(jnp.sqrt(gg), eps) *
                          jnp.maximum(jnp.sqrt(pp), eps))

  cos_max = jnp.max(cosine(gp_c, gg_c, pp_c), axis=channel, keepdims=True)
  channel_hit = cos_max < delta / math.sqrt(n_rest)
  layer_hit = cosine(gp_l, gg_l, pp_l) < delta / math.sqrt(n_layer)
  # p_n * <p_n, u> with p_n = p / (||p|| + eps): the reference's projection.
  coef_c = pu_c / jnp.square(jnp.sqrt(pp_c) + eps)
  coef_l = pu_l / jnp.square(jnp.sqrt(pp_l) + eps)
  coef = jnp.where(channel_hit, coef_c, jnp.where(layer_hit, coef_l, 0.0))
  projected = u - p * coef.astype(u.dtype)
  ratio = jnp.where(channel_hit | layer_hit, wd_ratio, 1.0).astype(u.dtype)
  return projected, ratio


class ScaleByProjectionState(NamedTuple):
  """State of :func:`scale_by_projection`: the wrapped transformation's state."""
  inner_state: optax.OptState


def scale_by_projection(
    inner: optax.GradientTransformation,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    projection_axes: Optional[ProjectionRule] = None,
    weight_decay_mask: Optional[Union[PyTree, Callable[[PyTree], PyTree]]] = None,
) -> optax.GradientTransformation:
  r"""Runs ``inner`` and removes the radial part of its output where it is idle.

  For a parameter :math:`w` with raw gradient :math:`g` and inner update
  :math:`u`, following the reference (channel test first, then layer test):

  .. math::
    \cos_c = \max_c \frac{|\langle g_c, w_c\rangle|}{\|g_c\|\,\|w_c\|},\qquad
    \cos_\ell = \frac{|\langle g, w\rangle|}{\|g\|\,\|w\|},\\
    \text{if } \cos_c < \delta/\sqrt{n_c}:\;
        u \leftarrow u - \hat w_c\langle \hat w_c, u_c\rangle,\ r=\text{wd\_ratio};
    \ \text{elif } \cos_\ell < \delta/\sqrt{n}:\;
        u \leftarrow u - \hat w\langle \hat w, u\rangle,\ r=\text{wd\_ratio};
    \ \text{else } r = 1,\\
    \text{output} = u + \lambda\, r\, w,

  where :math:`\hat w = w / (\|w\| + \epsilon)`, :math:`n_c` is the size of one
  channel and :math:`n` that of the whole tensor (norms clamped at
  :math:`\epsilon`). Parameters with ``ndim <= 1`` are never projected.

  Args:
    inner: the base direction (Adam's, SGD momentum's); it sees the raw gradient.
    delta: cosine threshold :math:`\delta` (0 never projects).
    wd_ratio: weight-decay multiplier :math:`r` for projected parameters.
    weight_decay: decoupled weight decay :math:`\lambda`, added after the
      projection (scaled by the learning rate downstream).
    eps: the reference's epsilon in norms and cosines.
    projection_axes: ``(path, leaf) -> ProjectionAxes | None``; default
      :func:`flax_projection_axes`.
    weight_decay_mask: optional pytree of bools (or a function of params giving
      one) selecting the parameters that are decayed; ``None`` decays all, as
      the reference does.

  Returns:
    An ``optax.GradientTransformation`` with :class:`ScaleByProjectionState`.
    ``update`` requires ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = scale_by_projection(optax.identity(), delta=1.0)
    >>> w = {'k': jnp.eye(2)}
    >>> u, _ = tx.update({'k': jnp.array([[0., 1.], [1., 0.]])}, tx.init(w), w)
    >>> u['k'].tolist()  # gradient orthogonal to each column: update unchanged
    [[0.0, 1.0], [1.0, 0.0]]

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021.
  """
  rule = flax_projection_axes if projection_axes is None else projection_axes

  def init_fn(params):
    return ScaleByProjectionState(inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('scale_by_projection needs params in update().')
    inner_updates, inner_state = inner.update(updates, state.inner_state, params)
    u_leaves, treedef = jax.tree.flatten(inner_updates)
    g_leaves = treedef.flatten_up_to(updates)
    p_leaves = treedef.flatten_up_to(params)
    # Rule outputs are static (shapes and names only), so resolved at trace time.
    axes = treedef.flatten_up_to(jax.tree_util.tree_map_with_path(rule, params))
    if weight_decay_mask is None:
      mask = [True] * len(p_leaves)
    else:
      mask_tree = (weight_decay_mask(params) if callable(weight_decay_mask)
                   else weight_decay_mask)
      mask = treedef.flatten_up_to(mask_tree)
    out = []
    for u, g, p, a, m in zip(u_leaves, g_leaves, p_leaves, axes, mask):
      projected, ratio = _project_leaf(u, g, p, a, delta, wd_ratio, eps)
      if weight_decay and m:
        projected = projected + weight_decay * ratio * p
      out.append(projected)
    projected = treedef.unflatten(out)
    return projected, ScaleByProjectionState(inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Public optimizers.


def adamp(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1,
          wd_ratio: float = 0.1, nesterov: bool = False, *,
          projection_axes: Optional[ProjectionRule] = None,
          weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""AdamP: Adam with the radial component of scale-invariant updates removed.

  .. math::
    u_t = \mathrm{Proj}_{w_t}\!\Big(\frac{1}{1-\beta_1^t}
          \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t}+\epsilon}\Big),\qquad
    w_{t+1} = w_t - \eta_t\,(u_t + \lambda\, r_t\, w_t),

  with Adam's moments :math:`m_t, v_t` of the raw gradient, the projection and
  weight-decay ratio :math:`r_t \in \{1, \text{wd\_ratio}\}` of
  :func:`scale_by_projection`. Equals ``optax.adamw`` when ``delta=0``.

  Args:
    learning_rate: :math:`\eta`, a float >= 0 or an optax schedule.
    b1, b2: moment decays in [0, 1).
    eps: Adam's epsilon, also used in the cosine and projection.
    weight_decay: decoupled weight decay :math:`\lambda` (multiplied by
      :math:`\eta_t r_t`).
    delta: cosine threshold; a parameter is projected when its cosine with the
      gradient is below ``delta / sqrt(dim)``.
    wd_ratio: weight-decay multiplier for projected parameters.
    nesterov: Nesterov momentum as in the reference.
    projection_axes: per-parameter channel rule (default
      :func:`flax_projection_axes`).
    weight_decay_mask: pytree of bools or function of params; ``None``: all.

  Returns:
    An ``optax.GradientTransformation``: ``chain(scale_by_projection(
    scale_by_adam_reference(...)), scale_by_learning_rate(learning_rate))``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> params = {'w': jnp.ones((3, 2))}
    >>> tx = adamp(1e-2)
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p['w'] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params['w'].shape
    (3, 2)

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021. https://arxiv.org/abs/2006.08217
  """
  check_learning_rate(learning_rate)
  check_unit_interval('b1', b1)
  check_unit_interval('b2', b2)
  for name, value in (('eps', eps), ('weight_decay', weight_decay),
                      ('delta', delta), ('wd_ratio', wd_ratio)):
    check_nonnegative(name, value)
  return optax.chain(
      scale_by_projection(scale_by_adam_reference(b1, b2, eps, nesterov),
                          delta=delta, wd_ratio=wd_ratio,
                          weight_decay=weight_decay, eps=eps,
                          projection_axes=projection_axes,
                          weight_decay_mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def sgdp(learning_rate: ScalarOrSchedule, momentum: float = 0.9,
         dampening: float = 0.0, weight_decay: float = 0.0,
         nesterov: bool = False, eps: float = 1e-8, delta: float = 0.1,
         wd_ratio: float = 0.1, *,
         projection_axes: Optional[ProjectionRule] = None,
         weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""SGDP: SGD with momentum, radial component of scale-invariant updates removed.

  .. math::
    b_t = \mu b_{t-1} + (1-\tau) g_t,\quad
    u_t = \mathrm{Proj}_{w_t}(b_t \text{ or } g_t + \mu b_t),\\
    w_{t+1} = w_t - \eta_t\Big(u_t + \frac{\lambda\, r_t}{1-\mu} w_t\Big).

  The :math:`1/(1-\mu)` on the weight decay is the reference's: it matches the
  decay to the momentum's effective step.

  Args:
    learning_rate: :math:`\eta`, a float >= 0 or an optax schedule.
    momentum: :math:`\mu`, in [0, 1).
    dampening: :math:`\tau`, in [0, 1].
    weight_decay: :math:`\lambda` >= 0.
    nesterov: Nesterov momentum.
    eps: epsilon of the cosine and projection.
    delta: cosine threshold (0 never projects).
    wd_ratio: weight-decay multiplier for projected parameters.
    projection_axes: per-parameter channel rule (default
      :func:`flax_projection_axes`).
    weight_decay_mask: pytree of bools or function of params; ``None``: all.

  Returns:
    An ``optax.GradientTransformation``: ``chain(scale_by_projection(
    trace_with_dampening(...)), scale_by_learning_rate(learning_rate))``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = sgdp(0.1, momentum=0.0)
    >>> params = {'w': jnp.ones((2, 2))}
    >>> u, _ = tx.update({'w': jnp.ones((2, 2))}, tx.init(params), params)
    >>> [round(float(x), 4) for x in u['w'].ravel()]  # parallel: plain SGD
    [-0.1, -0.1, -0.1, -0.1]

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021. https://arxiv.org/abs/2006.08217
  """
  check_learning_rate(learning_rate)
  check_unit_interval('momentum', momentum)
  check_unit_interval('dampening', dampening, closed=True)
  for name, value in (('eps', eps), ('weight_decay', weight_decay),
                      ('delta', delta), ('wd_ratio', wd_ratio)):
    check_nonnegative(name, value)
  return optax.chain(
      scale_by_projection(trace_with_dampening(momentum, dampening, nesterov),
                          delta=delta, wd_ratio=wd_ratio,
                          weight_decay=weight_decay / (1 - momentum), eps=eps,
                          projection_axes=projection_axes,
                          weight_decay_mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


__all__: Sequence[str] = (
    'ProjectionAxes', 'ScaleByAdamReferenceState', 'ScaleByProjectionState',
    'TraceWithDampeningState', 'adamp', 'flax_projection_axes', 'scale_by_adam_reference',
    'scale_by_projection', 'sgdp', 'trace_with_dampening')
