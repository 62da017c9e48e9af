r"""The names of this package's choices, each with what it does: curvature
matrices (`PRODUCTS`), trace estimators (`TRACE_METHODS`) and diagonal
estimators (`DIAGONAL_METHODS`).

Each dict's keys are the names used everywhere (``curvature(kind, ...)``,
``trace(op, method=...)``, the command's ``--kind`` and ``--trace_method``).
This module loads without JAX -- the functions import it when they are first
traced -- so that ``python -m analysis.hessian --help`` lists the choices
before JAX starts.

With :math:`\ell_i` the negative log-likelihood of position ``i`` (an
example, or a token) and :math:`J_i` the Jacobian of its outputs :math:`z_i`,
averaged over the :math:`N` positions:

=====================  =====================================================
``kind``               matrix
=====================  =====================================================
``'hessian'``          :math:`\nabla^2_\theta L`
``'ggn'``              :math:`J^\top \nabla^2_z L\, J` (generalized Gauss-Newton)
``'fisher'``           :math:`\frac1N \sum_i J_i^\top g_i g_i^\top J_i`,
                       :math:`g_i = \nabla_{z_i} \ell_i(\hat y_i)`, labels
                       :math:`\hat y_i` sampled from the model
``'empirical_fisher'`` the same with the data's labels :math:`y_i`
``'kfac'``             the Fisher's Kronecker-factored blocks
                       :math:`A_l \otimes G_l` of the Dense/DenseGeneral/Conv
                       layers (`analysis.hessian.kfac`)
``'ekfac'``            KFAC's eigenbasis with per-example eigenvalues
=====================  =====================================================

The true Fisher's expectation over the sampled labels is the GGN for a
softmax cross-entropy (and for a Gaussian likelihood with the matching
``noise_std``); the empirical Fisher is not a curvature matrix at all, but
is what many "Fisher" implementations compute.

Adding a curvature matrix is one product function here and one entry in
`PRODUCTS`, naming the inputs it needs (keys of `INPUTS`); `curvature`,
`run_curvature`, every solver and the command's ``--kind`` then know it::

  def my_product(params, batch, v, index, *, model_fn, output_loss_fn):
    import jax
    ...                                 # C_b v, a pytree like params

  PRODUCTS = {
      ...,
      'mine': Product(my_product, ('model_fn', 'output_loss_fn'),
                      'what it is, in a line for --help'),
  }
"""

# pylint: disable=g-import-not-at-top (JAX is imported when first traced)

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import numpy as np

# What products may need, with what each is (the message when it is missing).
INPUTS = {
    'loss_fn': '(params, batch) -> scalar',
    'model_fn': '(params, batch) -> outputs',
    'output_loss_fn': ('(outputs, batch) -> scalar with '
                       'output_loss_fn(model_fn(p, b), b) == loss_fn(p, b)'),
    'likelihood': (
        "the probabilistic form of the loss: likelihood='categorical' for a "
        "softmax cross-entropy, or Likelihood('gaussian', noise_std=SIGMA) "
        'for a squared error (an MSE loss has no noise model of its own: '
        'name it)'),
}


class Product(NamedTuple):
  """A curvature matrix, through its product with a vector on one batch.

  Attributes:
    fn: ``(params, batch, v, index, **needs) -> C_b v`` (a pytree like
      ``params``); ``index`` is the batch's position (for products that
      sample per batch).
    needs: the keys of `INPUTS` it takes as keyword arguments.
    help: what the matrix is, in a line (the command's ``--help``).
    build: ``(params, stacked_batches, **needs) -> matvec`` (a `Partial`),
      for matrices built once from all the batches (the Kronecker factors
      of KFAC, pooled over the batches); `curvature` uses it instead of
      averaging ``fn`` over the batches. None: ``fn`` per batch.
  """
  fn: Callable[..., Any]
  needs: Tuple[str, ...]
  help: str
  build: Optional[Callable[..., Any]] = None


def hessian_product(params, batch, v, index, *, loss_fn):
  r""":math:`\nabla^2_\theta L\, v`, forward-over-reverse (``jvp`` of
  ``grad``: about 2-3 gradients)."""
  del index
  import jax
  grad = lambda p: jax.grad(loss_fn)(p, batch)
  return jax.jvp(grad, (params,), (v,))[1]


def ggn_product(params, batch, v, index, *, model_fn, output_loss_fn):
  r""":math:`J^\top \nabla^2_z L\, J v`: a ``jvp`` and a ``vjp`` of the model
  (a language model's through its softmax by vocabulary chunks when
  ``output_loss_fn`` is a `softmax_ggn.ChunkedHead`)."""
  del index
  import jax
  from analysis.hessian import softmax_ggn
  if isinstance(output_loss_fn, softmax_ggn.ChunkedHead):
    return softmax_ggn.ggn_product(params, batch, v, output_loss_fn)
  apply = lambda p: model_fn(p, batch)
  outputs, jv = jax.jvp(apply, (params,), (v,))
  out_grad = lambda z: jax.grad(output_loss_fn)(z, batch)
  hjv = jax.jvp(out_grad, (outputs,), (jv,))[1]
  return jax.vjp(apply, params)[1](hjv)[0]


def _fisher(params, batch, v, index, model_fn, likelihood, empirical):
  r""":math:`\frac1N \sum_i J_i^\top g_i g_i^\top J_i v` for one batch."""
  import jax
  import jax.numpy as jnp
  apply = lambda p: model_fn(p, batch)
  outputs, jv = jax.jvp(apply, (params,), (v,))
  if empirical:
    labels = batch['targets'][None]
  else:
    key = jax.random.fold_in(jax.random.PRNGKey(likelihood.seed), index)
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


def fisher_product(params, batch, v, index, *, model_fn, likelihood):
  """The Fisher: per-position gradients at labels sampled from the model
  (``likelihood.num_samples`` per position, fixed by ``likelihood.seed``)."""
  return _fisher(params, batch, v, index, model_fn, likelihood, False)


def empirical_fisher_product(params, batch, v, index, *, model_fn,
                             likelihood):
  """The empirical Fisher: per-position gradients at the data's labels."""
  return _fisher(params, batch, v, index, model_fn, likelihood, True)


def _kfac_entry(flavour, correction, help_line):
  """The entry of KFAC / EKFAC (`analysis.hessian.kfac`): its product on one
  batch, and its builder from all the batches (factors pooled)."""
  def fn(params, batch, v, index, *, model_fn, likelihood):
    import jax
    from analysis.hessian import kfac
    kron = kfac.factors(model_fn, params, jax.tree.map(lambda x: x[None], batch),
                        likelihood=likelihood, flavour=flavour,
                        eigenvalue_correction=correction, first_index=index)
    return kfac.apply(kron, v)

  def build(params, stacked_batches, *, model_fn, likelihood):
    from analysis.hessian import kfac
    return kfac.matvec(kfac.factors(
        model_fn, params, stacked_batches, likelihood=likelihood,
        flavour=flavour, eigenvalue_correction=correction))
  return Product(fn, ('model_fn', 'likelihood'), help_line, build)


PRODUCTS = {
    'hessian': Product(hessian_product, ('loss_fn',),
                       'the Hessian of the loss'),
    'ggn': Product(ggn_product, ('model_fn', 'output_loss_fn'),
                   'its generalized Gauss-Newton part J^T H_out J'),
    'fisher': Product(fisher_product, ('model_fn', 'likelihood'),
                      'the Fisher (labels sampled from the model)'),
    'empirical_fisher': Product(empirical_fisher_product,
                                ('model_fn', 'likelihood'),
                                "the empirical Fisher (the data's labels)"),
    'kfac': _kfac_entry('fisher', False, 'KFAC of the Fisher (sampled '
                        'labels; Dense/Conv layers, zero elsewhere)'),
    'ekfac': _kfac_entry('fisher', True, "EKFAC: KFAC's eigenbasis with "
                         'per-example eigenvalues (sampled labels)'),
}
KINDS = tuple(PRODUCTS)


def product(kind: str) -> Product:
  """``PRODUCTS[kind]``, or a ValueError listing the kinds."""
  if kind not in PRODUCTS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  return PRODUCTS[kind]


# ---------------------------------------------------------------------------
# Trace and diagonal estimators (`analysis.hessian.estimators`), on an
# `Operator` ``op``, from ``num`` products.


class TraceMethod(NamedTuple):
  """A randomized trace estimator.

  Attributes:
    estimates: ``(op, key, num, batch_size) -> (p,) float64 estimates`` from
      ``num`` products: their mean is the estimate, their spread its
      standard error.
    min_hvps: the fewest products that give a standard error.
    sketch: it sketches ``num // sketch`` directions, which must be fewer
      than the dimension (None: no sketch).
    multiple: it spends products in multiples of this.
    adds_probes: adaptive rounds add 10 probes to the previous ones (else
      each round doubles the budget, from 100, and starts over).
    stderr: the estimates' spread is a standard error (False: none is
      reported, and an adaptive ``trace`` runs 'hutch++' instead).
  """
  estimates: Callable[..., np.ndarray]
  min_hvps: int
  sketch: Optional[int]
  multiple: int
  adds_probes: bool
  stderr: bool = True


def _hutchinson_trace(op, key, num, batch_size):
  from analysis.hessian import estimators
  return np.asarray(estimators.hutchinson(
      op.matvec, op.like, op.mask, key, num=num, batch_size=batch_size),
                    np.float64)


def _hutch_plus_plus_trace(op, key, num, batch_size):
  from analysis.hessian import estimators
  estimate, forms = estimators.hutch_plus_plus(
      op.matvec, op.like, op.mask, key, num=num, batch_size=batch_size)
  # The residual's Hutchinson forms, centred on the estimate: their mean is
  # the estimate, their spread the residual's.
  forms = np.asarray(forms, np.float64)
  return float(estimate) + (forms - forms.mean())


def _xtrace_trace(op, key, num, batch_size):
  from analysis.hessian import estimators
  # Correlated exchangeable estimates: no standard error (`estimators`).
  return np.asarray(estimators.xtrace(
      op.matvec, op.like, op.mask, key, num=num, dim=op.dim,
      batch_size=batch_size), np.float64)


TRACE_METHODS = {
    'xtrace': TraceMethod(_xtrace_trace, 4, 2, 2, False, stderr=False),
    'hutch++': TraceMethod(_hutch_plus_plus_trace, 3, 3, 1, False),
    'hutchinson': TraceMethod(_hutchinson_trace, 2, None, 1, True),
}


class DiagonalMethod(NamedTuple):
  """A randomized diagonal estimator.

  Attributes:
    estimate: ``(op, key, num, batch_size) -> (flat diagonal, flat per-entry
      standard error or None)`` from ``num`` products.
    sketch, multiple: as in `TraceMethod`.
  """
  estimate: Callable[..., Any]
  sketch: Optional[int]
  multiple: int


def _hutchinson_diagonal(op, key, num, batch_size):
  import jax.numpy as jnp
  from analysis.hessian import estimators
  rows = estimators.hutchinson(op.matvec, op.like, op.mask, key, num=num,
                               batch_size=batch_size, diag=True)
  return (jnp.mean(rows, axis=0),
          jnp.std(rows, axis=0, ddof=1) / np.sqrt(num))


def _xdiag_diagonal(op, key, num, batch_size):
  from analysis.hessian import estimators
  return estimators.xdiag(op.matvec, op.like, op.mask, key, num=num,
                          batch_size=batch_size), None


DIAGONAL_METHODS = {
    'hutchinson': DiagonalMethod(_hutchinson_diagonal, None, 1),
    'xdiag': DiagonalMethod(_xdiag_diagonal, 2, 2),
}
