r"""Curvature-vector products: Hessian, Gauss-Newton, Fisher, empirical Fisher.

Every curvature matrix is only ever touched through products :math:`v
\mapsto Cv` of the mean batch loss (`hvp_fn`); `make_operator` wraps one for
the solvers of this package, restricted to a block of parameters when given a
``mask`` (`analysis.hessian.blocks`). With :math:`\ell_i` the negative
log-likelihood of position ``i`` (an example, or a token) and :math:`J_i` the
Jacobian of its outputs :math:`z_i`, averaged over the :math:`N` positions:

=====================  =====================================================
``kind``               matrix
=====================  =====================================================
``'hessian'``          :math:`\nabla^2_\theta L`
``'ggn'``              :math:`J^\top \nabla^2_z L\, J` (generalized Gauss-Newton)
``'fisher'``           :math:`\frac1N \sum_i J_i^\top g_i g_i^\top J_i`,
                       :math:`g_i = \nabla_{z_i} \ell_i(\hat y_i)`, labels
                       :math:`\hat y_i` sampled from the model
``'empirical_fisher'`` the same with the data's labels :math:`y_i`
=====================  =====================================================

The true Fisher's expectation over the sampled labels is the GGN for a
softmax cross-entropy (and for a Gaussian likelihood with the matching
``noise_std``); the empirical Fisher is not a curvature matrix at all, but
is what many "Fisher" implementations compute.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from analysis.hessian import blocks
from analysis.lanczos import trees
from dynamics.types import Batch, LossFn, PyTree

KINDS = ('hessian', 'ggn', 'fisher', 'empirical_fisher')


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """The model's predictive distribution, for ``kind='fisher'`` and
  ``'empirical_fisher'``.

  Attributes:
    name: 'categorical' (softmax over the outputs' last axis: cross-entropy)
      or 'gaussian' (``N(outputs, noise_std^2 I)`` per example, the first
      axis: a squared error).
    noise_std: the Gaussian's standard deviation (required for 'gaussian').
    num_samples: labels sampled per position for the true Fisher.
    seed: seed of the sampled labels (the operator is fixed by it).

  Example:
    >>> lik = Likelihood('categorical')
    >>> lik.nll(jnp.zeros((2, 4)), jnp.array([0, 3]))
    Array([1.3862944, 1.3862944], dtype=float32)
  """
  name: str
  noise_std: float | None = None
  num_samples: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.name not in ('categorical', 'gaussian'):
      raise ValueError(f"likelihood must be 'categorical' or 'gaussian', "
                       f'got {self.name!r}')
    if self.name == 'gaussian' and not (self.noise_std or 0) > 0:
      raise ValueError(
          "a 'gaussian' likelihood needs its noise model: "
          'Likelihood("gaussian", noise_std=SIGMA) with SIGMA > 0 (the '
          'outputs are the mean of N(f(x), SIGMA^2 I))')

  def num_positions(self, outputs: jax.Array) -> int:
    """The ``N`` of the means: every position but the class axis, or examples."""
    shape = np.shape(outputs)
    return int(np.prod(shape[:-1])) if self.name == 'categorical' else shape[0]

  def nll(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood (up to constants) per position, shape ``(N,)``."""
    if self.name == 'categorical':
      z = outputs.reshape(-1, outputs.shape[-1])
      y = targets.reshape(-1)
      return (jax.nn.logsumexp(z, axis=-1)
              - jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0])
    err = (outputs - targets.reshape(outputs.shape)).reshape(outputs.shape[0], -1)
    return 0.5 * jnp.sum(err ** 2, axis=-1) / self.noise_std ** 2

  def sample(self, key: jax.Array, outputs: jax.Array) -> jax.Array:
    """``num_samples`` labels per position drawn from the model: shape
    ``(num_samples,) + targets' shape``."""
    outputs = jax.lax.stop_gradient(outputs)
    s = self.num_samples
    if self.name == 'categorical':
      return jax.random.categorical(key, outputs, axis=-1,
                                    shape=(s,) + outputs.shape[:-1])
    return outputs[None] + self.noise_std * jax.random.normal(
        key, (s,) + outputs.shape, outputs.dtype)


def as_likelihood(likelihood: Likelihood | str | None) -> Likelihood | None:
  return Likelihood(likelihood) if isinstance(likelihood, str) else likelihood


def _fisher_product(likelihood, model_fn, params, batch, v, key, empirical):
  """``(1/N) sum_i J_i^T g_i g_i^T J_i v`` for one batch."""
  apply = lambda p: model_fn(p, batch)
  outputs, jv = jax.jvp(apply, (params,), (v,))
  if empirical:
    labels = batch['targets'][None]
  else:
    labels = likelihood.sample(key, outputs)
  nll_sum = lambda z, y: jnp.sum(likelihood.nll(z, y))
  grads = jax.vmap(jax.grad(nll_sum), in_axes=(None, 0))(outputs, labels)
  if likelihood.name == 'categorical':
    coeff = jnp.sum(grads * jv[None], axis=-1, keepdims=True)
  else:
    axes = tuple(range(2, grads.ndim))
    coeff = jnp.sum(grads * jv[None], axis=axes).reshape(
        grads.shape[:2] + (1,) * len(axes))
  scale = 1.0 / (labels.shape[0] * likelihood.num_positions(outputs))
  u = scale * jnp.sum(grads * coeff, axis=0)
  return jax.vjp(apply, params)[1](u.astype(outputs.dtype))[0]


@functools.lru_cache(maxsize=64)
def _batched_product(kind: str, loss_fn, model_fn, output_loss_fn,
                     likelihood):
  """A jitted ``(params, stacked_batches, v) -> mean_b C_b v``, one per
  (kind, functions): every `hvp_fn` of the same loss shares a compilation."""

  def single(params, batch, v, index):
    if kind == 'hessian':
      grad = lambda p: jax.grad(loss_fn)(p, batch)
      return jax.jvp(grad, (params,), (v,))[1]
    if kind == 'ggn':
      apply = lambda p: model_fn(p, batch)
      outputs, jv = jax.jvp(apply, (params,), (v,))
      out_grad = lambda z: jax.grad(output_loss_fn)(z, batch)
      hjv = jax.jvp(out_grad, (outputs,), (jv,))[1]
      return jax.vjp(apply, params)[1](hjv)[0]
    key = jax.random.fold_in(jax.random.PRNGKey(likelihood.seed), index)
    return _fisher_product(likelihood, model_fn, params, batch, v, key,
                           kind == 'empirical_fisher')

  @jax.jit
  def product(params, stacked_batches, v):
    v = trees.cast_like(v, params)
    num_batches = jax.tree.leaves(stacked_batches)[0].shape[0]
    if num_batches == 1:  # No loop: less to compile.
      return single(params, jax.tree.map(lambda x: x[0], stacked_batches), v,
                    jnp.int32(0))

    # A scan with a running sum: memory does not grow with the batches.
    def accumulate(carry, batch):
      total, index = carry
      return (optax.tree.add(total, single(params, batch, v, index)),
              index + 1), None

    (total, _), _ = jax.lax.scan(
        accumulate, (optax.tree.zeros_like(params), jnp.int32(0)),
        stacked_batches)
    return optax.tree.scale(1.0 / num_batches, total)

  return product


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
  def stack(*xs):
    if all(isinstance(x, np.ndarray) or np.isscalar(x) for x in xs):
      return np.stack(xs)  # Host arrays: no compilation.
    return jnp.stack([jnp.asarray(x) for x in xs])

  return jax.tree.map(stack, *batches)


def check_kind(kind: str, loss_fn, model_fn, output_loss_fn,
               likelihood) -> Likelihood | None:
  """Raises a ValueError naming what ``kind`` needs and was not given."""
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if kind == 'hessian' and loss_fn is None:
    raise ValueError("kind='hessian' needs loss_fn")
  if kind == 'ggn' and (model_fn is None or output_loss_fn is None):
    raise ValueError("kind='ggn' needs model_fn and output_loss_fn")
  likelihood = as_likelihood(likelihood)
  if kind in ('fisher', 'empirical_fisher'):
    if model_fn is None:
      raise ValueError(f'kind={kind!r} needs model_fn')
    if likelihood is None:
      raise ValueError(
          f'kind={kind!r} needs the probabilistic form of the loss: '
          "likelihood='categorical' for a softmax cross-entropy, or "
          "Likelihood('gaussian', noise_std=SIGMA) for a squared error (an "
          'MSE loss has no noise model of its own: name it)')
  return likelihood


def hvp_fn(loss_fn: LossFn | None, params: PyTree, batches: Iterable[Batch],
           *, kind: str = 'hessian', model_fn: Callable | None = None,
           output_loss_fn: Callable | None = None,
           likelihood: Likelihood | str | None = None) -> Partial:
  r"""Curvature-vector product of the mean batch loss (see the module table).

  .. math::
     v \mapsto \frac{1}{B} \sum_{b=1}^{B} C_b\, v, \qquad
     \nabla^2_\theta L\, v = \partial_\epsilon \nabla_\theta
       L(\theta + \epsilon v) \big|_{\epsilon = 0}

  The Hessian product is forward-over-reverse (``jax.jvp`` of ``jax.grad``,
  about 2-3 gradients); the others are one ``jvp`` and one ``vjp`` of the
  model. The batches are stacked and summed in a ``lax.scan`` (constant
  memory in their number), so the product is traced and compiled once.

  Args:
    loss_fn: ``(params, batch) -> scalar`` (for 'hessian').
    params: the point at which the matrix is taken.
    batches: batches with identical shapes; each is weighted equally.
    kind: 'hessian', 'ggn', 'fisher' or 'empirical_fisher'.
    model_fn: ``(params, batch) -> outputs`` (all but 'hessian').
    output_loss_fn: ``(outputs, batch) -> scalar`` with
      ``output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)`` (for 'ggn').
    likelihood: a `Likelihood` (or 'categorical') for the Fisher kinds.

  Returns:
    A `jax.tree_util.Partial` ``v -> Cv`` on pytrees shaped like ``params``;
    being a pytree, it can be passed into jitted solvers without recompiling.

  Raises:
    ValueError: an unknown ``kind``, or one missing what it needs (the
      message names it).

  Example:
    >>> loss = lambda w, b: jnp.sum(b * w ** 4) / 12
    >>> hvp = hvp_fn(loss, jnp.ones(2), [jnp.array([1., 2.])])
    >>> hvp(jnp.array([1., 1.]))
    Array([1., 2.], dtype=float32)
  """
  likelihood = check_kind(kind, loss_fn, model_fn, output_loss_fn, likelihood)
  impl = _batched_product(
      kind, loss_fn if kind == 'hessian' else None,
      None if kind == 'hessian' else model_fn,
      output_loss_fn if kind == 'ggn' else None,
      likelihood if kind in ('fisher', 'empirical_fisher') else None)
  return Partial(impl, params, _stack_batches(batches))


class Operator(NamedTuple):
  """A curvature operator, possibly restricted to a block of parameters.

  Attributes:
    matvec: ``v -> Cv`` on pytrees like ``params`` (a `Partial`, so solvers
      compile it once); zero outside the block.
    like: the parameters (shapes, dtypes and layout of the vectors).
    mask: 0/1 pytree of the block (None: every parameter).
    dim: the dimension of the block.
  """
  matvec: Partial
  like: PyTree
  mask: PyTree | None
  dim: int


def make_operator(loss_fn: LossFn | None, params: PyTree,
                  batches: Iterable[Batch], *, mask: Any = None,
                  kind: str = 'hessian', model_fn: Callable | None = None,
                  output_loss_fn: Callable | None = None,
                  likelihood: Likelihood | str | None = None) -> Operator:
  """The `hvp_fn` product as an `Operator`, restricted to ``mask``'s block
  (see `analysis.hessian.blocks.block_mask`) when given."""
  op = hvp_fn(loss_fn, params, batches, kind=kind, model_fn=model_fn,
              output_loss_fn=output_loss_fn, likelihood=likelihood)
  if mask is None:
    return Operator(op, params, None, trees.size(params))
  weights, dim = blocks.mask_weights(params, mask)
  return Operator(Partial(blocks.masked_apply, op, weights), params, weights,
                  dim)


def default_key(key: jax.Array | None) -> jax.Array:
  """``key``, or ``PRNGKey(0)`` when None (the solvers' default start)."""
  return jax.random.PRNGKey(0) if key is None else key
