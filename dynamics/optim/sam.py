"""Sharpness-aware gradients: SAM, ASAM, SAM-ON, m-sharpness, unnormalized SAM.

SAM replaces the gradient at :math:`w` by the gradient at an adversarially
perturbed point :math:`w + \\hat\\epsilon(w)`. Here it is a *gradient estimator*
(:func:`sam_gradient`) that the train step calls instead of
``jax.value_and_grad``; its output goes to any base optimizer from the config.

Why not ``optax.contrib.sam``: that wrapper is an optimizer whose ``update`` is
called once per *half*-step (adversarial, then outer) unless ``opaque_mode``
hands it a gradient closure. In the first mode the training loop, the step
counter, the schedule and BatchNorm statistics all see two steps per SAM step;
in the second the optimizer must own a closure over the batch and model state
and cannot return the loss or the auxiliary outputs (new BatchNorm statistics,
metrics) of the unperturbed pass. Neither offers ASAM, masks (SAM-ON) or
m-sharpness. As an estimator, SAM leaves the optimizer state, the schedule and
the checkpoint layout exactly those of the base optimizer, costs exactly two
forward-backward passes, and takes aux from the first pass only.

ASAM follows its authors' released code (SamsungLabs/ASAM, ``asam.py``), the
convention its published results were run with: only the parameters PyTorch
names ``weight`` are scaled by :math:`T_w = |w| + \\eta` -- in Flax, kernels,
embedding tables and normalization scales (`asam_scaled`) -- while biases and
normalization offsets keep :math:`T_w = 1` (still inside the norm), and
:math:`\\eta = 0.01` by default (with :math:`\\eta = 0` a weight at exactly 0
would never be perturbed). ``all_leaves=True`` scales every leaf instead.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Union

import jax
import jax.numpy as jnp
import optax

from dynamics.types import PyTree, param_name

Mask = Union[None, PyTree, Callable[[PyTree], PyTree]]

# Guards the normalization when the gradient is exactly zero (as in the
# widely used PyTorch SAM, which adds 1e-12 to the norm).
_NORM_EPS = 1e-12

# The leaves the official ASAM code scales: PyTorch's ``weight`` parameters
# (Linear / Conv kernels, Embedding tables, BatchNorm / LayerNorm scales) under
# their Flax names; ``pos_embed`` is a learned position table (the
# ``wpe.weight`` of PyTorch GPT implementations).
ASAM_SCALED_NAMES = ('kernel', 'embedding', 'pos_embed', 'scale')


def norm_mask(params: PyTree) -> PyTree:
  """SAM-ON mask: True for leaves inside a module whose name contains "norm".

  The module names are the path entries above the leaf (the leaf's own name,
  e.g. ``scale``, is not looked at), matched case-insensitively, so
  ``norm_attn``, ``BatchNorm_0``, ``LayerNorm_1`` and ``q_norm`` all count.

  Args:
    params: a parameter pytree (e.g. ``variables['params']``).

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> norm_mask({'norm_attn': {'scale': jnp.ones(2)},
    ...            'dense': {'kernel': jnp.ones((2, 2))}})
    {'dense': {'kernel': False}, 'norm_attn': {'scale': True}}
  """
  def is_norm(path, _):
    return any('norm' in part.lower()
               for part in param_name(path).split('/')[:-1])
  return jax.tree_util.tree_map_with_path(is_norm, params)


def asam_scaled(params: PyTree) -> PyTree:
  """ASAM's scaled leaves: True where the official code uses :math:`|w| + \\eta`.

  A leaf is scaled when its own name (the last entry of its `param_name`) is
  one of `ASAM_SCALED_NAMES` -- kernels, embeddings and normalization scales,
  the parameters PyTorch calls ``weight``; biases, normalization offsets and
  anything else (DyT's ``alpha``) are not.

  Args:
    params: a parameter pytree.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> asam_scaled({'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
    ...              'LayerNorm_0': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}})
    {'LayerNorm_0': {'bias': False, 'scale': True}, 'dense': {'bias': False, 'kernel': True}}
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_name(path).split('/')[-1] in ASAM_SCALED_NAMES,
      params)


# ``config.optimizer.sam.mask``: the parameters SAM perturbs.
SAM_MASKS: Dict[str, Mask] = {'all': None, 'norm': norm_mask}


def sam_mask(name: str) -> Mask:
  """The mask for ``config.optimizer.sam.mask``: 'all' -> None, 'norm' -> SAM-ON."""
  if name not in SAM_MASKS:
    raise ValueError(f'optimizer.sam.mask must be one of {tuple(SAM_MASKS)}, '
                     f'got {name!r}')
  return SAM_MASKS[name]


@dataclasses.dataclass(frozen=True)
class SamOptions:
  """The train step's SAM settings (``config.optimizer.sam``), hashable.

  ``rho=None`` is plain gradients; the other fields are the arguments of
  :func:`sam_gradient` of the same names (``mask`` by its name in
  `SAM_MASKS`).
  """
  rho: Optional[float] = None
  adaptive: bool = False
  eta: float = 0.01
  mask: str = 'all'
  num_microbatches: int = 1
  normalize: bool = True
  all_leaves: bool = False

  @classmethod
  def from_config(cls, sam_config: Any) -> 'SamOptions':
    s = sam_config
    return cls(rho=None if s.rho is None else float(s.rho),
               adaptive=bool(s.adaptive), eta=float(s.eta), mask=s.mask,
               num_microbatches=int(s.num_microbatches),
               normalize=bool(s.normalize), all_leaves=bool(s.all_leaves))


def _resolve_mask(mask: Mask, params: PyTree) -> list:
  leaves, treedef = jax.tree.flatten(params)
  if mask is None:
    return [True] * len(leaves)
  tree = mask(params) if callable(mask) else mask
  return [bool(m) for m in treedef.flatten_up_to(tree)]


def _validate(rho: float, eta: float, num_microbatches: int) -> None:
  if rho is None or rho < 0:
    raise ValueError(f'rho must be >= 0, got {rho}')
  if eta < 0:
    raise ValueError(f'eta must be >= 0, got {eta}')
  if int(num_microbatches) != num_microbatches or num_microbatches < 1:
    raise ValueError(
        f'num_microbatches must be an integer >= 1, got {num_microbatches}')


def sam_perturbation(grads: PyTree, params: PyTree, *, rho: float,
                     adaptive: bool = False, eta: float = 0.01,
                     mask: Mask = None, normalize: bool = True,
                     all_leaves: bool = False) -> PyTree:
  r"""The SAM / ASAM ascent step :math:`\hat\epsilon`, zero outside ``mask``.

  .. math::
    \hat\epsilon = \rho\,\frac{T_w^2\, g}{\|T_w\, g\|_2}
    \ \text{(normalized)}\quad\text{or}\quad
    \hat\epsilon = \rho\, T_w^2\, g\ \text{(}\texttt{normalize=False}\text{)},

  with :math:`T_w = |w| + \eta` (ASAM) on the leaves `asam_scaled` selects
  (every leaf with ``all_leaves``) and :math:`T_w = 1` elsewhere (all leaves
  for SAM). The norm runs over the masked leaves only (SAM-ON normalizes the
  normalization-layer gradient on its own), scaled and unscaled leaves alike,
  as in the official ASAM code. Normalized ASAM's step satisfies
  :math:`\|T_w^{-1}\hat\epsilon\|_2 = \rho`.

  Args:
    grads: gradient at ``params``.
    params: the point :math:`w`.
    rho: radius :math:`\rho \ge 0` (unnormalized: the step multiplier).
    adaptive: ASAM's element-wise scale.
    eta: ASAM's :math:`\eta \ge 0` (0.01, the official code's default).
    mask: ``None`` (all leaves), a pytree of bools, or ``params -> pytree``.
    normalize: divide by :math:`\|T_w g\|` (SAM); ``False`` gives
      unnormalized SAM, :math:`\hat\epsilon = \rho\,g`.
    all_leaves: ASAM scales every leaf, biases and normalization offsets
      included (not the official convention).

  Returns:
    :math:`\hat\epsilon`, a pytree like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> e = sam_perturbation({'w': jnp.array([3., 4.])}, {'w': jnp.zeros(2)},
    ...                      rho=0.5)
    >>> [round(float(x), 4) for x in e['w']]
    [0.3, 0.4]
    >>> e = sam_perturbation({'w': jnp.array([3., 4.])}, {'w': jnp.zeros(2)},
    ...                      rho=0.5, normalize=False)
    >>> [round(float(x), 4) for x in e['w']]
    [1.5, 2.0]

  References:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021; Kwon et al., "ASAM: Adaptive Sharpness-Aware
    Minimization for Scale-Invariant Learning of Deep Neural Networks",
    ICML 2021 (and its code, github.com/SamsungLabs/ASAM); unnormalized SAM:
    Andriushchenko & Flammarion, "Towards Understanding Sharpness-Aware
    Minimization", ICML 2022.
  """
  _validate(rho, eta, 1)
  g_leaves, treedef = jax.tree.flatten(grads)
  p_leaves = treedef.flatten_up_to(params)
  on = _resolve_mask(mask, params)
  if adaptive:
    scaled_leaves = ([True] * len(p_leaves) if all_leaves else
                     treedef.flatten_up_to(asam_scaled(params)))
    scales = [jnp.abs(p) + eta if s else None
              for p, s in zip(p_leaves, scaled_leaves)]
  else:
    scales = [None] * len(p_leaves)
  scaled = [g if t is None else t * g for g, t in zip(g_leaves, scales)]
  if normalize:
    norm = optax.tree.norm([s for s, m in zip(scaled, on) if m])
    factor = rho / (norm + _NORM_EPS)
  else:
    factor = rho
  out = []
  for s, t, m in zip(scaled, scales, on):
    if not m:
      out.append(jnp.zeros_like(s))
    else:
      e = s if t is None else t * s
      out.append((factor * e).astype(s.dtype))
  return treedef.unflatten(out)


def _split_microbatches(batch: PyTree, num_microbatches: int) -> PyTree:
  def split(x):
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] % num_microbatches:
      raise ValueError(
          f'num_microbatches={num_microbatches} must divide the leading batch '
          f'axis of every array in the batch; got shape {x.shape}')
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches)
                     + x.shape[1:])
  return jax.tree.map(split, batch)


def _average_aux(aux: PyTree) -> PyTree:
  # Floating leaves (losses, metrics, BatchNorm statistics) are averaged over
  # micro-batches: a BatchNorm running update is affine in the batch statistic,
  # so the mean of the per-micro-batch updates is the update by their mean.
  # Other leaves (counters, integer outputs) are taken from the first one.
  def reduce(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      return jnp.mean(x, axis=0)
    return x[0]
  return jax.tree.map(reduce, aux)


def sam_gradient(loss_fn: Callable[..., Any], params: PyTree, batch: PyTree, *,
                 rho: float, adaptive: bool = False, eta: float = 0.01,
                 mask: Mask = None, num_microbatches: int = 1,
                 has_aux: bool = False, normalize: bool = True,
                 all_leaves: bool = False) -> tuple[Any, PyTree]:
  r"""The loss at ``params`` and the sharpness-aware gradient there.

  For each of the :math:`m` micro-batches :math:`B_i` (m-sharpness):

  .. math::
    g_i = \nabla L_{B_i}(w),\qquad
    \hat\epsilon_i = \rho\,\frac{T_w^2 g_i}{\|T_w g_i\|}\odot \text{mask},\qquad
    g^{\mathrm{SAM}} = \frac{1}{m}\sum_i \nabla L_{B_i}(w + \hat\epsilon_i),

  with :math:`T_w` as in :func:`sam_perturbation` (SAM: 1; ASAM:
  :math:`|w| + \eta` on kernels, embeddings and normalization scales, 1 on
  biases and offsets, as in the official code; SAM-ON: ``mask=norm_mask``).
  With ``normalize=False`` (unnormalized SAM) :math:`\hat\epsilon_i = \rho\,
  T_w^2 g_i`. On a quadratic of curvature :math:`\lambda`, gradient descent at
  learning rate :math:`\eta` with plain unnormalized SAM multiplies the error
  by :math:`1 - \eta\lambda(1 + \rho\lambda)` per step, so it is stable
  while :math:`\eta\lambda(1 + \rho\lambda) < 2`. The returned loss is the
  unperturbed :math:`\frac1m\sum_i L_{B_i}(w)`.

  Cost: two forward-backward passes per step (micro-batches are vectorized, not
  looped). BatchNorm: with ``has_aux=True`` the aux (new running statistics,
  metrics) comes from the first, unperturbed pass only, so running statistics
  are updated once per step, at :math:`w`; the perturbed pass's aux is
  discarded. With :math:`m > 1`, floating aux leaves are averaged over
  micro-batches (for running statistics this equals one update by the mean
  micro-batch statistic); other leaves come from the first micro-batch.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``-> (loss, aux)`` with
      ``has_aux``).
    params: the point :math:`w`.
    batch: pytree of arrays sharing a leading batch axis.
    rho: radius :math:`\rho \ge 0`; ``0`` returns the plain gradient.
    adaptive: ASAM.
    eta: ASAM's :math:`\eta \ge 0` (0.01, the official code's default).
    mask: ``None`` (all), a pytree of bools like ``params``, or a function
      ``params -> pytree of bools`` (e.g. :func:`norm_mask`).
    num_microbatches: :math:`m`; must divide the leading axis of the batch.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    normalize: ``False``: unnormalized SAM (:math:`\hat\epsilon = \rho g`).
    all_leaves: ASAM scales every leaf (see :func:`sam_perturbation`).

  Returns:
    ``(loss, grads)``, or ``((loss, aux), grads)`` with ``has_aux``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda p, b: jnp.mean((b['x'] * p['w'] - b['y']) ** 2)
    >>> batch = {'x': jnp.ones(4), 'y': jnp.zeros(4)}
    >>> loss, g = sam_gradient(loss_fn, {'w': jnp.array(1.)}, batch, rho=0.5)
    >>> float(loss), float(g['w'])  # gradient at w + 0.5 = 1.5
    (1.0, 3.0)

  References:
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", ICLR 2021. Kwon et al., "ASAM", ICML 2021. Mueller et al.,
    "Normalization Layers Are All That Sharpness-Aware Minimization Needs",
    NeurIPS 2023. Unnormalized SAM: Andriushchenko & Flammarion, "Towards
    Understanding Sharpness-Aware Minimization", ICML 2022; its edge of
    stability :math:`\eta\lambda(1 + \rho\lambda) = 2`: Agarwala & Dauphin,
    "SAM operates far from home: eigenvalue regularization as a dynamical
    phenomenon", ICML 2023.
  """
  _validate(rho, eta, num_microbatches)
  if mask is not None and not callable(mask):
    _resolve_mask(mask, params)  # structure errors surface here, not in vmap

  def with_aux(p, b):
    out = loss_fn(p, b)
    return out if has_aux else (out, None)

  grad_fn = jax.value_and_grad(with_aux, has_aux=True)

  def one(p, b):
    (loss, aux), g = grad_fn(p, b)
    e = sam_perturbation(g, p, rho=rho, adaptive=adaptive, eta=eta, mask=mask,
                         normalize=normalize, all_leaves=all_leaves)
    perturbed = jax.tree.map(lambda w, d: w + d, p, e)
    # Only the gradient of the second pass is used; XLA drops its aux.
    _, g_sam = grad_fn(perturbed, b)
    return loss, aux, g_sam

  if num_microbatches == 1:
    loss, aux, grads = one(params, batch)
  else:
    micro = _split_microbatches(batch, int(num_microbatches))
    loss, aux, grads = jax.vmap(one, in_axes=(None, 0))(params, micro)
    loss = jnp.mean(loss)
    aux = _average_aux(aux)
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
  return ((loss, aux), grads) if has_aux else (loss, grads)


__all__ = ['ASAM_SCALED_NAMES', 'SAM_MASKS', 'SamOptions', 'asam_scaled',
           'norm_mask', 'sam_gradient', 'sam_mask', 'sam_perturbation']
