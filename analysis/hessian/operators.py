r"""Hessian- and Gauss-Newton-vector products, and their restriction to a block.

The Hessian is only ever touched through products :math:`v \mapsto Hv`
(Pearlmutter, 1994). `hvp_fn` builds the product of the mean batch loss;
`make_operator` wraps it for the solvers of this package, restricted to a
block of parameters when given a ``mask`` (see `block_mask`): the spectrum is
then that of the diagonal block :math:`H_{SS}`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from dynamics.types import Batch, LossFn, PyTree, param_names

# Named parameter blocks for per-block spectra: regular expressions matched
# (case-insensitively) against parameter names (`dynamics.types.param_name`).
# Normalization modules carry "norm" in their names (see dynamics.models).
BLOCKS = {
    'attention': r'attn|attention',
    'mlp': r'mlp',
    'norm': r'norm',
    'embedding': r'embed',
}


def default_key(key: jax.Array | None) -> jax.Array:
  """``key``, or ``PRNGKey(0)`` when None (the solvers' default start)."""
  return jax.random.PRNGKey(0) if key is None else key


def _stack_batches(batches: Iterable[Batch]) -> PyTree:
  """Stacks equally-shaped batches along a new leading axis."""
  batches = list(batches)
  if not batches:
    raise ValueError('batches is empty: pass a list of at least one batch')
  structures = {jax.tree.structure(b) for b in batches}
  shapes = {tuple(np.shape(x) for x in jax.tree.leaves(b)) for b in batches}
  if len(structures) > 1 or len(shapes) > 1:
    raise ValueError(
        'all batches must have the same structure and shapes (the HVP is '
        f'compiled once for them); got shapes {sorted(shapes)}')
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                      *batches)


@functools.lru_cache(maxsize=64)
def _batched_hvp(loss_fn: LossFn | None, kind: str, model_fn, output_loss_fn):
  """A jitted ``(params, stacked_batches, v) -> mean_b H_b v``, one per loss.

  Cached on the loss function so that every `hvp_fn` built from the same
  ``loss_fn`` (one per training-time probe) shares one compilation.
  """

  def single(params, batch, v):
    if kind == 'hessian':
      # Forward-over-reverse: one jvp through the gradient.
      grad = lambda p: jax.grad(loss_fn)(p, batch)
      return jax.jvp(grad, (params,), (v,))[1]
    # Gauss-Newton: J^T H_out J v, with H_out the Hessian of the loss with
    # respect to the model outputs (PSD for convex output losses).
    apply = lambda p: model_fn(p, batch)
    outputs, jv = jax.jvp(apply, (params,), (v,))
    out_grad = lambda z: jax.grad(output_loss_fn)(z, batch)
    hjv = jax.jvp(out_grad, (outputs,), (jv,))[1]
    return jax.vjp(apply, params)[1](hjv)[0]

  @jax.jit
  def hvp(params, stacked_batches, v):
    v = jax.tree.map(lambda x, p: x.astype(p.dtype), v, params)
    num_batches = jax.tree.leaves(stacked_batches)[0].shape[0]

    def accumulate(total, batch):
      return optax.tree.add(total, single(params, batch, v)), None

    total, _ = jax.lax.scan(accumulate, optax.tree.zeros_like(params),
                            stacked_batches)
    return optax.tree.scale(1.0 / num_batches, total)

  return hvp


def hvp_fn(loss_fn: LossFn | None, params: PyTree, batches: Iterable[Batch],
           *, kind: str = 'hessian', model_fn: Callable | None = None,
           output_loss_fn: Callable | None = None) -> Partial:
  r"""Hessian-vector (or Gauss-Newton-vector) product of the mean batch loss.

  .. math::
     v \mapsto \frac{1}{B} \sum_{b=1}^{B} \nabla^2_\theta L(\theta; x_b)\, v
     = \frac{1}{B} \sum_b \partial_\epsilon \nabla_\theta
       L(\theta + \epsilon v; x_b) \big|_{\epsilon = 0}

  computed forward-over-reverse (``jax.jvp`` of ``jax.grad``), about 2-3
  gradients per product. With ``kind='ggn'`` the product is
  :math:`J^\top H_{\text{out}} J v` with :math:`J = \partial f/\partial\theta`
  of ``model_fn`` and :math:`H_{\text{out}}` the Hessian of
  ``output_loss_fn`` in the outputs. The batches are stacked and summed in a
  ``lax.scan``, so the product is traced and compiled once, whatever their
  number.

  Args:
    loss_fn: ``(params, batch) -> scalar`` (ignored for ``kind='ggn'``).
    params: the point at which the Hessian is taken.
    batches: batches with identical shapes; each is weighted equally.
    kind: 'hessian' or 'ggn'.
    model_fn: ``(params, batch) -> outputs`` (for 'ggn').
    output_loss_fn: ``(outputs, batch) -> scalar`` with
      ``output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)`` (for 'ggn').

  Returns:
    A `jax.tree_util.Partial` ``v -> Hv`` on pytrees shaped like ``params``;
    being a pytree, it can be passed into jitted solvers without recompiling.

  Example:
    >>> loss = lambda w, b: jnp.sum(b * w ** 4) / 12
    >>> hvp = hvp_fn(loss, jnp.ones(2), [jnp.array([1., 2.])])
    >>> hvp(jnp.array([1., 1.]))
    Array([1., 2.], dtype=float32)
  """
  if kind not in ('hessian', 'ggn'):
    raise ValueError(f"kind must be 'hessian' or 'ggn', got {kind!r}")
  if kind == 'hessian':
    if loss_fn is None:
      raise ValueError("kind='hessian' needs loss_fn")
    impl = _batched_hvp(loss_fn, kind, None, None)
  else:
    if model_fn is None or output_loss_fn is None:
      raise ValueError("kind='ggn' needs model_fn and output_loss_fn")
    impl = _batched_hvp(None, kind, model_fn, output_loss_fn)
  return Partial(impl, params, _stack_batches(batches))


# ---------------------------------------------------------------------------
# Masks: spectra of a block of parameters.


def block_mask(params: PyTree, select: Any) -> PyTree:
  """A pytree of bools selecting a block of parameters.

  Args:
    params: the parameters.
    select: a key of `BLOCKS` ('attention', 'mlp', 'norm', 'embedding'), a
      regular expression searched (case-insensitively) in each leaf's name
      (`dynamics.types.param_name`, e.g. ``'block_0/attn/qkv/kernel'``), a
      callable ``(name, leaf) -> bool``, or already a pytree of bools shaped
      like ``params``.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Raises:
    ValueError: if nothing is selected (the message lists the names).

  Example:
    >>> params = {'attn': {'kernel': jnp.ones(2)}, 'mlp': {'kernel': jnp.ones(3)}}
    >>> block_mask(params, 'attention')
    {'attn': {'kernel': True}, 'mlp': {'kernel': False}}
  """
  leaves, treedef = jax.tree.flatten(params)
  names = param_names(params)
  if isinstance(select, str):
    pattern = re.compile(BLOCKS.get(select, select), re.IGNORECASE)
    chosen = [bool(pattern.search(n)) for n in names]
  elif callable(select):
    chosen = [bool(select(n, leaf)) for n, leaf in zip(names, leaves)]
  else:
    chosen = [bool(x) for x in jax.tree.leaves(select)]
    if len(chosen) != len(names):
      raise ValueError(f'mask has {len(chosen)} leaves, params {len(names)}')
  sizes = [np.size(leaf) for leaf in leaves]
  if not any(c and s for c, s in zip(chosen, sizes)):
    raise ValueError(
        f'mask {select!r} selects no parameters; parameter names are: '
        + ', '.join(names))
  return jax.tree.unflatten(treedef, chosen)


def selected_index(params: PyTree, mask: Any) -> np.ndarray:
  """Indices, in ``ravel_pytree(params)`` order, of the entries ``mask``
  selects (see `block_mask`)."""
  mask = block_mask(params, mask)
  pieces = [np.full(np.size(p), m, bool) for p, m in
            zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
  return np.flatnonzero(np.concatenate(pieces))


def _restricted_apply(op, params, index, x):
  """``(H e(x))[S]`` for the flat sub-vector ``x`` of the selected entries S."""
  flat, unravel = ravel_pytree(params)
  full = jnp.zeros_like(flat).at[index].set(x.astype(flat.dtype))
  y, _ = ravel_pytree(op(unravel(full)))
  return y[index]


class Operator(NamedTuple):
  """A (possibly restricted) operator and how to map its vectors back.

  Attributes:
    matvec: ``v -> Av`` (a `Partial`, so solvers compile it once).
    like: a vector of the operator's space (``params``, or a flat vector of
      the selected entries).
    to_params: a flat vector of that space -> a pytree like ``params`` (zero
      outside the block).
    dim: the dimension of the space.
  """
  matvec: Partial
  like: PyTree
  to_params: Callable[[jax.Array], PyTree]
  dim: int


def make_operator(loss_fn: LossFn | None, params: PyTree,
                  batches: Iterable[Batch], *, mask: Any = None,
                  kind: str = 'hessian', model_fn: Callable | None = None,
                  output_loss_fn: Callable | None = None) -> Operator:
  """The `hvp_fn` product, restricted to ``mask``'s block when given."""
  op = hvp_fn(loss_fn, params, batches, kind=kind, model_fn=model_fn,
              output_loss_fn=output_loss_fn)
  flat, unravel = ravel_pytree(params)
  if mask is None:
    return Operator(op, params, lambda x: unravel(x.astype(flat.dtype)),
                    flat.size)
  index = selected_index(params, mask)

  def to_params(x):
    return unravel(jnp.zeros_like(flat).at[index].set(x.astype(flat.dtype)))

  sub = Partial(_restricted_apply, op, params, jnp.asarray(index))
  return Operator(sub, jnp.zeros(index.size, flat.dtype), to_params,
                  index.size)
