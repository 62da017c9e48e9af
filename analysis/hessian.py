r"""Hessian spectra of training losses: eigenpairs, densities, traces, sharpness.

Everything here is matrix-free: the Hessian is only touched through
Hessian-vector products (HVPs), so the same code gives the exact top
eigenvalues of a 500-parameter MLP (tested against ``jnp.linalg.eigh``) and
runs on models where a dense Hessian is unthinkable.

Conventions (all functions):
  * ``loss_fn(params, batch) -> scalar``; ``batches`` is a list (or any
    re-iterable) of batches with identical shapes, and the operator is the
    Hessian of the mean of the per-batch losses, :math:`H = \frac{1}{B}
    \sum_b \nabla^2 L(\theta; \text{batch}_b)`.
  * Eigenvalues are sorted in descending (algebraic) order; eigenvectors are
    returned as a list of pytrees shaped like ``params``.
  * ``mask`` (a pytree of bools, a callable ``(path, leaf) -> bool``, a regular
    expression on ``'/'``-joined parameter paths, or a key of `BLOCKS`)
    restricts the operator to the selected parameters: the spectrum is that of
    the diagonal block :math:`H_{SS}` (e.g. the attention layers).

Command (loads a checkpoint, writes ``hessian_<step>.json`` and a PNG plot)::

  python -m analysis.hessian --workdir=runs/wsd --step=3000 --k=10 --density

(``--kind=ggn`` for the generalized Gauss-Newton matrix instead, ``--trace``
for Hutchinson's trace, ``--block=attention`` for one block.)

References:
  Pearlmutter, "Fast Exact Multiplication by the Hessian" (1994).
  Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
  via Hessian Eigenvalue Density" (ICML 2019).
  Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the
  Lens of the Hessian" (2020).
  Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability" (ICLR 2021).
  Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (2022).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from analysis import lanczos as lz

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]

# Named parameter blocks for per-block spectra: regular expressions matched
# (case-insensitively) against '/'-joined parameter paths. Normalization
# modules carry "norm" in their names (see dynamics.models).
BLOCKS = {
    'attention': r'attn|attention',
    'mlp': r'mlp',
    'norm': r'norm',
    'embedding': r'embed',
}


# ---------------------------------------------------------------------------
# Hessian-vector products.


def _stack_batches(batches: Iterable[PyTree]) -> PyTree:
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


def hvp_fn(loss_fn: LossFn | None, params: PyTree, batches: Iterable[PyTree],
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


def param_paths(params: PyTree) -> list[str]:
  """'/'-joined paths of the leaves of ``params``, in flattening order."""
  return [jax.tree_util.keystr(path, simple=True, separator='/')
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def block_mask(params: PyTree, select: Any) -> PyTree:
  """A pytree of bools selecting a block of parameters.

  Args:
    params: the parameters.
    select: a key of `BLOCKS` ('attention', 'mlp', 'norm', 'embedding'), a
      regular expression searched (case-insensitively) in each leaf's
      '/'-joined path, a callable ``(path, leaf) -> bool``, or already a pytree
      of bools shaped like ``params``.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Raises:
    ValueError: if nothing is selected (the message lists the paths).
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = param_paths(params)
  if isinstance(select, str):
    pattern = re.compile(BLOCKS.get(select, select), re.IGNORECASE)
    chosen = [bool(pattern.search(p)) for p in paths]
  elif callable(select):
    chosen = [bool(select(p, leaf)) for p, (_, leaf) in
              zip(paths, leaves_with_path)]
  else:
    chosen = [bool(x) for x in jax.tree.leaves(select)]
    if len(chosen) != len(paths):
      raise ValueError(f'mask has {len(chosen)} leaves, params {len(paths)}')
  sizes = [np.size(leaf) for _, leaf in leaves_with_path]
  if not any(c and s for c, s in zip(chosen, sizes)):
    raise ValueError(
        f'mask {select!r} selects no parameters; parameter paths are: '
        + ', '.join(paths))
  return jax.tree_util.tree_unflatten(treedef, chosen)


def _restricted_apply(op, params, index, x):
  """``(H e(x))[S]`` for the flat sub-vector ``x`` of the selected entries S."""
  flat, unravel = ravel_pytree(params)
  full = jnp.zeros_like(flat).at[index].set(x.astype(flat.dtype))
  y, _ = ravel_pytree(op(unravel(full)))
  return y[index]


def _selected_index(params: PyTree, mask: Any) -> np.ndarray:
  mask = block_mask(params, mask)
  pieces = [np.full(np.size(p), m, bool) for p, m in
            zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
  return np.flatnonzero(np.concatenate(pieces))


class _Operator(NamedTuple):
  """A (possibly restricted) operator and how to map its vectors back."""
  matvec: Partial
  like: PyTree
  to_params: Callable[[jax.Array], PyTree]   # flat vector -> params pytree
  dim: int


def _operator(loss_fn, params, batches, *, mask=None, kind='hessian',
              model_fn=None, output_loss_fn=None) -> _Operator:
  op = hvp_fn(loss_fn, params, batches, kind=kind, model_fn=model_fn,
              output_loss_fn=output_loss_fn)
  flat, unravel = ravel_pytree(params)
  if mask is None:
    return _Operator(op, params, lambda x: unravel(x.astype(flat.dtype)),
                     flat.size)
  index = _selected_index(params, mask)

  def to_params(x):
    return unravel(jnp.zeros_like(flat).at[index].set(x.astype(flat.dtype)))

  sub = Partial(_restricted_apply, op, params, jnp.asarray(index))
  return _Operator(sub, jnp.zeros(index.size, flat.dtype), to_params,
                   index.size)


# ---------------------------------------------------------------------------
# Eigenpairs.


def _default_key(key):
  return jax.random.PRNGKey(0) if key is None else key


def _check_k(k: int, num_iters: int, dim: int) -> None:
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if k > dim:
    raise ValueError(f'k={k} exceeds the number of parameters ({dim})')
  if k > min(num_iters, dim):
    raise ValueError(
        f'k={k} is larger than the number of Lanczos iterations '
        f'(num_iters={num_iters}): m iterations give at most m eigenvalues; '
        f'use num_iters >= 2 * k for accurate ones')


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  """Indices of the ``k`` wanted Ritz values, in descending algebraic order."""
  if which == 'LA':
    idx = np.arange(k)
  elif which == 'SA':
    idx = np.arange(len(theta) - k, len(theta))
  else:
    idx = np.sort(np.argsort(-np.abs(theta), kind='stable')[:k])
  return idx


def top_eigenpairs(loss_fn: LossFn, params: PyTree, batches: Iterable[PyTree],
                   k: int = 5, *, num_iters: int | None = None,
                   tol: float | None = 1e-5, key: jax.Array | None = None,
                   dtype: Any = None, which: str = 'LA', mask: Any = None,
                   kind: str = 'hessian', model_fn: Callable | None = None,
                   output_loss_fn: Callable | None = None,
                   init_vector: PyTree | None = None, min_iters: int = 1,
                   return_info: bool = False, progress: bool = False):
  r"""Top-``k`` Hessian eigenpairs by Lanczos with full reorthogonalization.

  Runs Lanczos on :math:`H` (see `analysis.lanczos.lanczos`) until the ``k``
  wanted Ritz pairs :math:`(\theta_i, y_i)` have residual
  :math:`\|H y_i - \theta_i y_i\| = \beta_m |s_{m,i}| \le`
  ``tol`` :math:`\cdot |\theta_i|`, or after ``num_iters`` HVPs.

  Args:
    loss_fn: ``(params, batch) -> scalar``.
    params: point at which the Hessian is taken.
    batches: list of equally-shaped batches (the loss is their mean).
    k: number of eigenpairs.
    num_iters: maximum HVPs (default ``max(30, 3 k)``; capped at the
      dimension).
    tol: relative residual at which to stop (None: always ``num_iters``).
    key: PRNG key of the random start vector.
    dtype: Lanczos dtype (``jnp.float64`` for float32 params needs x64).
    which: 'LA' (largest algebraic, the default), 'SA' (smallest algebraic:
      the most negative curvature) or 'LM' (largest magnitude).
    mask: restrict to a block of parameters (see `block_mask`).
    kind: 'hessian' or 'ggn' (then pass ``model_fn``, ``output_loss_fn``).
    model_fn, output_loss_fn: see `hvp_fn`.
    init_vector: start vector (pytree like ``params``), e.g. the previous top
      eigenvector to warm-start a training-time probe.
    min_iters: never stop before this many HVPs.
    return_info: also return a dict with ``num_hvps``, ``residuals`` and
      ``converged``.
    progress: show a progress bar over HVPs.

  Returns:
    ``(eigvals (k,), eigvecs)`` with eigenvalues descending and eigenvectors a
    list of ``k`` unit-norm pytrees like ``params`` (zero outside ``mask``);
    plus ``info`` if ``return_info``.

  Raises:
    ValueError: ``k`` larger than ``num_iters`` or the dimension, or an empty
      mask. FloatingPointError: a non-finite HVP (the iteration is named).

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> vals, vecs = top_eigenpairs(loss, jnp.zeros(4), [jnp.arange(4.)], k=2)
    >>> np.round(np.asarray(vals), 5)
    array([3., 2.], dtype=float32)
  """
  op = _operator(loss_fn, params, batches, mask=mask, kind=kind,
                 model_fn=model_fn, output_loss_fn=output_loss_fn)
  num_iters = max(30, 3 * k) if num_iters is None else num_iters
  _check_k(k, num_iters, op.dim)
  if init_vector is not None and mask is not None:
    init_vector = ravel_pytree(init_vector)[0][_selected_index(params, mask)]
  with lz.progress_bar(min(num_iters, op.dim), 'Lanczos HVPs', progress):
    run = lz.run_lanczos(op.matvec, op.like, num_iters,
                         key=_default_key(key), dtype=dtype,
                         init_vector=init_vector, tol=tol, num_wanted=k,
                         which=which, min_iters=min_iters, progress=progress)
  theta, s = lz.tridiagonal_eigh(run.alphas, run.betas)
  if k > len(theta):
    raise ValueError(f'only {len(theta)} Lanczos iterations ran; k={k}')
  idx = _select(theta, k, which)
  vecs = lz.ritz_vectors(run.basis, s[:, idx])
  eigvecs = [op.to_params(v) for v in vecs]
  eigvals = jnp.asarray(theta[idx], run.basis.dtype)
  if not return_info:
    return eigvals, eigvecs
  residuals = run.beta_last * np.abs(s[-1, idx])
  converged = tol is not None and np.all(residuals <= tol * np.abs(theta[idx]))
  info = {'num_hvps': run.num_matvecs, 'residuals': residuals,
          'converged': bool(converged)}
  return eigvals, eigvecs, info


def power_iteration(loss_fn: LossFn, params: PyTree,
                    batches: Iterable[PyTree], k: int = 1, *,
                    max_iters: int = 100, tol: float = 1e-3,
                    key: jax.Array | None = None, dtype: Any = None,
                    mask: Any = None, return_info: bool = False):
  r"""Top-``k`` (by magnitude) eigenpairs by deflated power iteration.

  PyHessian's method, for comparison with `top_eigenpairs`: for each
  eigenpair, :math:`v \leftarrow Hv / \|Hv\|` with ``v`` kept orthogonal to
  the eigenvectors already found, stopping when the Rayleigh quotient moves
  by less than ``tol`` relative (or after ``max_iters`` HVPs). It converges
  at rate :math:`|\lambda_{i+1}/\lambda_i|` per HVP, so clustered eigenvalues
  take many HVPs and its error is about ``tol``, not machine precision.

  Args:
    loss_fn, params, batches, key, dtype, mask: as in `top_eigenpairs`.
    k: number of eigenpairs.
    max_iters: HVP budget per eigenpair.
    tol: relative change of the eigenvalue estimate at which to stop.
    return_info: also return ``{'num_hvps': ...}``.

  Returns:
    ``(eigvals (k,), eigvecs)``, sorted descending, like `top_eigenpairs`.

  Example:
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)
    >>> vals, _ = power_iteration(loss, jnp.zeros(3), [jnp.array([1., 2., 4.])],
    ...                           tol=1e-8, max_iters=200)
    >>> np.round(np.asarray(vals), 4)
    array([4.], dtype=float32)

  References:
    Yao et al., "PyHessian: Neural Networks Through the Lens of the Hessian".
  """
  op = _operator(loss_fn, params, batches, mask=mask)
  _check_k(k, op.dim, op.dim)
  vals, vecs, num_hvps = lz.run_power_iteration(
      op.matvec, op.like, k, key=_default_key(key), max_iters=max_iters,
      tol=tol, dtype=dtype)
  order = np.argsort(-vals, kind='stable')
  eigvals = jnp.asarray(vals[order], vecs.dtype)
  eigvecs = [op.to_params(vecs[i]) for i in order]
  if return_info:
    return eigvals, eigvecs, {'num_hvps': num_hvps}
  return eigvals, eigvecs


# ---------------------------------------------------------------------------
# Densities and traces.


def spectral_density(loss_fn: LossFn, params: PyTree,
                     batches: Iterable[PyTree], *, num_probes: int = 10,
                     num_iters: int = 80, grid: Any = 2001,
                     sigma: float | None = None, key: jax.Array | None = None,
                     dtype: Any = None, mask: Any = None,
                     kind: str = 'hessian', model_fn: Callable | None = None,
                     output_loss_fn: Callable | None = None,
                     return_info: bool = False, progress: bool = False):
  r"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

  .. math::
     \phi_\sigma(t) = \frac{1}{n_v} \sum_{l=1}^{n_v} \sum_{i=1}^{m}
       \tau_i^{(l)}\, \mathcal{N}(t;\, \theta_i^{(l)}, \sigma^2)
     \approx \frac{1}{n} \sum_{j=1}^{n} \mathcal{N}(t;\, \lambda_j, \sigma^2),

  with :math:`(\theta^{(l)}, \tau^{(l)})` the Gauss quadrature nodes and
  weights of ``m`` Lanczos steps from the ``l``-th Gaussian probe (see
  `analysis.lanczos.slq_nodes`). The density integrates to one and its
  moments are unbiased estimates of :math:`\mathrm{tr}(H^p)/n`, broadened by
  ``sigma`` (the second moment gains :math:`\sigma^2`).

  Args:
    loss_fn, params, batches, key, dtype, mask, kind, model_fn,
      output_loss_fn: as in `top_eigenpairs`.
    num_probes: random probe vectors :math:`n_v`.
    num_iters: Lanczos steps per probe ``m`` (one HVP each).
    grid: number of grid points (spanning the nodes with a ``6 sigma``
      margin, so the density integrates to 1 on it) or an explicit grid.
    sigma: Gaussian broadening (default: 1% of the nodes' range).
    return_info: also return ``{'nodes', 'weights', 'num_hvps', 'sigma'}``.
    progress: show a progress bar over HVPs.

  Returns:
    ``(grid (g,), density (g,))`` as NumPy float64 arrays.

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization
    via Hessian Eigenvalue Density" (ICML 2019); Lin, Saad & Yang,
    "Approximating Spectral Densities of Large Matrices" (2016).
  """
  op = _operator(loss_fn, params, batches, mask=mask, kind=kind,
                 model_fn=model_fn, output_loss_fn=output_loss_fn)
  num_iters = min(num_iters, op.dim)
  with lz.progress_bar(num_probes * num_iters, 'SLQ HVPs', progress):
    nodes, weights = lz.slq_nodes(op.matvec, op.like, num_probes=num_probes,
                                  num_iters=num_iters,
                                  key=_default_key(key), dtype=dtype,
                                  progress=progress)
  lo, hi = float(nodes.min()), float(nodes.max())
  if sigma is None:
    sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
  if np.ndim(grid) == 0:
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, int(grid))
  grid = np.asarray(grid, np.float64)
  density = lz.gaussian_density(nodes, weights, grid, sigma)
  if return_info:
    return grid, density, {'nodes': nodes, 'weights': weights, 'sigma': sigma,
                           'num_hvps': num_probes * num_iters}
  return grid, density


@functools.partial(jax.jit, static_argnames=('num_probes',))
def _hutchinson_jit(op, like, key, *, num_probes):
  flat, unravel = ravel_pytree(like)

  def quadratic_form(probe_key):
    z = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
    hz, _ = ravel_pytree(op(unravel(z)))
    return jnp.vdot(z, hz)

  return jax.lax.map(quadratic_form, jax.random.split(key, num_probes))


def trace(loss_fn: LossFn, params: PyTree, batches: Iterable[PyTree], *,
          num_probes: int = 100, key: jax.Array | None = None,
          mask: Any = None, kind: str = 'hessian',
          model_fn: Callable | None = None,
          output_loss_fn: Callable | None = None) -> tuple[float, float]:
  r"""Hutchinson's estimate of :math:`\mathrm{tr}(H)` with Rademacher probes.

  .. math::
     \widehat{\mathrm{tr}} = \frac{1}{p} \sum_{l=1}^{p} z_l^\top H z_l, \quad
     z_l \in \{\pm 1\}^n, \qquad
     \mathrm{s.e.} = \frac{\mathrm{std}(z_l^\top H z_l)}{\sqrt{p}},

  unbiased with variance :math:`2(\|H\|_F^2 - \sum_i H_{ii}^2)/p`.

  Args:
    loss_fn, params, batches, key, mask, kind, model_fn, output_loss_fn: as in
      `top_eigenpairs`.
    num_probes: number of probes ``p`` (HVPs); at least 2.

  Returns:
    ``(estimate, standard_error)`` as Python floats.

  Raises:
    FloatingPointError: a probe's HVP was not finite.

  References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix
    for Laplacian smoothing splines" (1989).
  """
  if num_probes < 2:
    raise ValueError('num_probes must be >= 2 to estimate a standard error')
  op = _operator(loss_fn, params, batches, mask=mask, kind=kind,
                 model_fn=model_fn, output_loss_fn=output_loss_fn)
  values = np.asarray(_hutchinson_jit(op.matvec, op.like, _default_key(key),
                                      num_probes=num_probes), np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise FloatingPointError(
        f'non-finite Hessian-vector product at Hutchinson probe {bad[0] + 1} '
        f'of {num_probes}; stopping.')
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(num_probes))


# ---------------------------------------------------------------------------
# Preconditioned sharpness (adaptive optimizers).


def find_second_moment(opt_state: Any) -> tuple[PyTree, Any]:
  """The Adam-type second-moment estimate ``nu`` and its step ``count``.

  Walks the (nested NamedTuple) optimizer state for the first state with a
  ``nu`` field, as in `optax.scale_by_adam` and the optimizers of
  `dynamics.optim` built from it.

  Returns:
    ``(nu, count)``, ``count`` None if that state has none.

  Raises:
    ValueError: if the state holds no ``nu`` (not an adaptive optimizer).
  """
  stack = [opt_state]
  while stack:
    node = stack.pop(0)
    fields = getattr(node, '_fields', None)
    if fields is not None and 'nu' in fields:
      return node.nu, getattr(node, 'count', None)
    if isinstance(node, dict):
      stack.extend(node.values())
    elif isinstance(node, (tuple, list)):
      stack.extend(node)
  raise ValueError(
      'opt_state has no Adam-type second moment `nu`: preconditioned sharpness '
      'is defined for adam, adamw, adamp and stable_spam states')


def _scaled_apply(op, scale, v):
  """``D H D v`` for a diagonal ``D`` given as a pytree ``scale``."""
  hv = op(jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, v))
  return jax.tree.map(lambda s, x: s.astype(x.dtype) * x, scale, hv)


def preconditioner_scale(opt_state: Any, *, b2: float | None = None,
                         eps: float = 1e-8) -> tuple[PyTree, int | None]:
  r"""``D = P^{-1/2}`` with ``P = diag(sqrt(nu_hat) + eps)`` from an Adam state.

  ``nu_hat = nu / (1 - b2**count)`` (bias-corrected as in the update) when
  ``b2`` is given, else ``nu``.

  Returns:
    ``(D, count)``.
  """
  nu, count = find_second_moment(opt_state)
  correction = 1.0
  if b2 is not None and count is not None and int(count) > 0:
    correction = 1.0 - b2 ** int(count)
  scale = jax.tree.map(lambda n: jax.lax.rsqrt(jnp.sqrt(n / correction) + eps),
                       nu)
  return scale, None if count is None else int(count)


def preconditioned_sharpness(loss_fn: LossFn, params: PyTree,
                             batches: Iterable[PyTree], opt_state: Any, *,
                             b2: float | None = None, eps: float = 1e-8,
                             num_iters: int = 20, tol: float | None = 1e-4,
                             key: jax.Array | None = None, dtype: Any = None,
                             init_vector: PyTree | None = None,
                             min_iters: int = 1, return_info: bool = False):
  r"""Top eigenvalue of the preconditioned Hessian :math:`P^{-1} H`.

  For an Adam-type update :math:`\theta \leftarrow \theta - \eta P^{-1} m`
  with :math:`P = \mathrm{diag}(\sqrt{\hat\nu} + \epsilon)`, the stability
  threshold of the preconditioned quadratic is
  :math:`\lambda_1(P^{-1}H) < (2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η for
  β1 = 0.9), at which adaptive methods hover ("Adaptive Edge of Stability").
  :math:`P^{-1}H` is similar to the symmetric :math:`P^{-1/2} H P^{-1/2}`, so
  Lanczos applies.

  Args:
    loss_fn, params, batches, key, dtype: as in `top_eigenpairs`.
    opt_state: optimizer state holding a second moment ``nu`` (`optax.adam`,
      `optax.adamw`, `dynamics.optim`'s Adam-type optimizers).
    b2: the optimizer's second-moment decay, for bias correction (None: use
      ``nu`` as is).
    eps: the optimizer's epsilon.
    num_iters: maximum HVPs.
    tol: relative residual at which to stop.
    init_vector: warm start (a previous eigenvector, in the symmetric basis).
    min_iters: never stop before this many HVPs.
    return_info: also return ``{'num_hvps', 'eigvec'}``.

  Returns:
    :math:`\lambda_{\max}(P^{-1}H)` as a float (plus ``info``).

  References:
    Cohen et al., "Adaptive Gradient Methods at the Edge of Stability" (2022).
  """
  scale, _ = preconditioner_scale(opt_state, b2=b2, eps=eps)
  op = hvp_fn(loss_fn, params, batches)
  sym = Partial(_scaled_apply, op, scale)
  run = lz.run_lanczos(sym, params, num_iters, key=_default_key(key),
                       dtype=dtype, init_vector=init_vector, tol=tol,
                       min_iters=min_iters)
  theta, s = lz.tridiagonal_eigh(run.alphas, run.betas)
  value = float(theta[0])
  if not return_info:
    return value
  _, unravel = ravel_pytree(params)
  eigvec = unravel(lz.ritz_vectors(run.basis, s[:, :1])[0])
  return value, {'num_hvps': run.num_matvecs, 'eigvec': eigvec}


# ---------------------------------------------------------------------------
# Training-time probe: the edge of stability.


class SharpnessProbe:
  r"""Training callback logging the top Hessian eigenvalue (and friends).

  ``train_and_evaluate`` calls it as ``probe(state, ctx)`` at every step that
  is a multiple of ``every``. At multiples of ``config.analysis
  .sharpness_every`` it logs

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
  moves slowly, at most ``config.analysis.sharpness_iters``.

  The probe batches are ``ctx.probe_batches(config.analysis
  .sharpness_batches)`` (held-out), or the first training batches with
  ``config.analysis.sharpness_data='train'`` -- for full-batch gradient
  descent, the whole training set, whose sharpness is what sits at
  :math:`2/\eta`.

  Args:
    config: the run's config (reads ``analysis`` and ``optimizer``).
    tol: relative Ritz residual at which Lanczos stops.
    min_iters: HVPs always spent (guards against a stale warm start).
    warm_start_noise: relative size of the random component added to the
      previous eigenvector.
    trace_probes: Rademacher probes per trace estimate.
  """

  def __init__(self, config: Any, *, tol: float = 3e-3, min_iters: int = 3,
               warm_start_noise: float = 0.1, trace_probes: int = 10):
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
    self.b2, self.eps = config.optimizer.b2, config.optimizer.eps
    self.tol, self.min_iters = tol, min_iters
    self.warm_start_noise, self.trace_probes = warm_start_noise, trace_probes
    self._key = jax.random.PRNGKey(config.seed)
    self._ctx, self._loss = None, None
    self._previous: dict[str, PyTree] = {}

  def _loss_fn(self, ctx) -> LossFn:
    # One loss function per context, taking the model state as data, so that
    # every probe reuses the same compiled Lanczos.
    if ctx is not self._ctx:
      self._ctx = ctx

      def loss(params, batch_and_model_state):
        batch, model_state = batch_and_model_state
        return ctx.loss_fn(model_state)(params, batch)
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
    return optax.tree.add(previous,
                          optax.tree.scale(self.warm_start_noise, noise))

  def batches(self, ctx) -> list[PyTree]:
    if self.data == 'train':
      return [ctx.dataset.train_batch(i) for i in range(self.num_batches)]
    return ctx.probe_batches(self.num_batches)

  def __call__(self, state: Any, ctx: Any) -> dict[str, float]:
    step = int(state.step)
    loss = self._loss_fn(ctx)
    batches = [(b, state.model_state) for b in self.batches(ctx)]
    key = jax.random.fold_in(self._key, step)
    out: dict[str, float] = {}
    if self.sharpness_every and step % self.sharpness_every == 0:
      vals, vecs, info = top_eigenpairs(
          loss, state.params, batches, k=1, num_iters=self.num_iters,
          tol=self.tol, key=key,
          init_vector=self._start('hessian', state.params, key),
          min_iters=self.min_iters, return_info=True)
      self._previous['hessian'] = vecs[0]
      out['sharpness'] = float(vals[0])
      out['sharpness_hvps'] = info['num_hvps']
      out.update(self._preconditioned(loss, state, batches, key))
    if self.trace_every and step % self.trace_every == 0:
      estimate, stderr = trace(loss, state.params, batches,
                               num_probes=self.trace_probes, key=key)
      out['hessian_trace'] = estimate
      out['hessian_trace_stderr'] = stderr
    return out

  def _preconditioned(self, loss, state, batches, key) -> dict[str, float]:
    try:
      _, count = find_second_moment(state.opt_state)
    except ValueError:
      return {}  # Not an adaptive optimizer.
    if count is not None and int(count) == 0:
      return {}  # nu = 0 before the first update: P^{-1} H is meaningless.
    value, info = preconditioned_sharpness(
        loss, state.params, batches, state.opt_state, b2=self.b2,
        eps=self.eps, num_iters=self.num_iters, tol=self.tol, key=key,
        init_vector=self._start('preconditioned', state.params, key),
        min_iters=self.min_iters, return_info=True)
    self._previous['preconditioned'] = info['eigvec']
    return {'preconditioned_sharpness': value,
            'preconditioned_sharpness_hvps': info['num_hvps']}


# ---------------------------------------------------------------------------
# Command line: python -m analysis.hessian --workdir=runs/wsd --step=3000 ...


def _seconds_per_call(fn, *args, repeats: int = 5) -> float:
  """Median wall time of a compiled call (after one warm-up call)."""
  import time  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _plot(path: str, result: dict[str, Any]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  has_density = 'density' in result
  fig, axes = plt.subplots(1, 2 if has_density else 1,
                           figsize=(11 if has_density else 5.5, 4),
                           squeeze=False)
  eig = np.asarray(result['eigenvalues'])
  ax = axes[0, 0]
  ax.stem(np.arange(1, len(eig) + 1), eig)
  ax.set_yscale('symlog', linthresh=max(1e-3 * np.abs(eig).max(), 1e-12))
  ax.set(xlabel='index i', ylabel=r'$\lambda_i$ (symlog)',
         title=f"top-{len(eig)} Hessian eigenvalues, step {result['step']}")
  if has_density:
    d = result['density']
    grid, values = np.asarray(d['grid']), np.asarray(d['values'])
    ax = axes[0, 1]
    ax.plot(grid, np.maximum(values, 1e-12))
    ax.set_xscale('symlog', linthresh=max(10 * d['sigma'], 1e-12))
    ax.set_yscale('log')
    ax.set_ylim(bottom=max(values.max() * 1e-8, 1e-12))
    ax.set(xlabel=r'$\lambda$ (symlog)', ylabel='density',
           title=f"SLQ density ({d['num_probes']} probes x "
                 f"{d['num_iters']} Lanczos steps)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Loads a checkpoint, computes its spectrum, writes JSON and a PNG plot.

  Args:
    argv: command-line arguments (default ``sys.argv[1:]``); see ``--help``.

  Returns:
    The dictionary written to ``hessian_<step>.json``.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from dynamics import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dynamics import train as train_lib  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(
      prog='python -m analysis.hessian',
      description='Hessian spectrum of a checkpoint on held-out batches.')
  parser.add_argument('--workdir', required=True, help='run directory')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the latest)')
  parser.add_argument('--kind', choices=('hessian', 'ggn'), default='hessian',
                      help='the Hessian of the loss, or its generalized '
                      'Gauss-Newton part J^T H_out J (positive semi-definite '
                      'for cross-entropy and MSE)')
  parser.add_argument('--k', type=int, default=10, help='top eigenvalues')
  parser.add_argument('--num_iters', type=int, default=None,
                      help='max Lanczos HVPs for the top-k (default 3k+30)')
  parser.add_argument('--tol', type=float, default=1e-4,
                      help='relative Ritz residual to stop at')
  parser.add_argument('--density', action='store_true',
                      help='also the SLQ spectral density')
  parser.add_argument('--num_probes', type=int, default=10)
  parser.add_argument('--density_iters', type=int, default=80)
  parser.add_argument('--trace', action='store_true',
                      help="also Hutchinson's trace (--num_probes probes)")
  parser.add_argument('--num_batches', type=int, default=4,
                      help='held-out batches in the loss')
  parser.add_argument('--block', default=None,
                      help=f'restrict to a parameter block: one of {sorted(BLOCKS)} '
                      'or a regular expression on parameter paths')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=None,
                      help='output directory (default: the workdir)')
  args = parser.parse_args(argv)

  steps = checkpoint_lib.available_steps(args.workdir)
  if not steps:
    raise SystemExit(f'no checkpoints in {args.workdir}')
  if args.step is not None and args.step not in steps:
    raise SystemExit(f'no checkpoint at step {args.step} in {args.workdir}; '
                     f'available steps: {steps}')
  config, state = checkpoint_lib.load_checkpoint(args.workdir, args.step)
  step = int(state.step)
  parts = train_lib.build(config)
  ctx = train_lib.Context(config, parts.model, parts.dataset, parts.schedule,
                          parts.tx, parts.options)
  loss = ctx.loss_fn(state.model_state)
  # The same matrix in every computation below: Hessian or GGN.
  matrix = dict(kind=args.kind)
  if args.kind == 'ggn':
    matrix.update(model_fn=ctx.model_fn(state.model_state),
                  output_loss_fn=ctx.output_loss_fn())
  batches = [parts.dataset.eval_batch(i) for i in range(args.num_batches)]
  num_params = sum(np.size(p) for p in jax.tree.leaves(state.params))
  print(f'step {step}: {num_params:,} parameters, {args.kind} of the loss on '
        f'{args.num_batches} held-out batches', flush=True)

  # Cost of one HVP relative to one gradient, on one batch.
  one = [batches[0]]
  grad = jax.jit(jax.grad(loss))
  batch0 = jax.tree.map(jnp.asarray, batches[0])
  grad_s = _seconds_per_call(grad, state.params, batch0)
  hvp = hvp_fn(loss, state.params, one, **matrix)
  hvp_s = _seconds_per_call(hvp, state.params)
  result: dict[str, Any] = {
      'workdir': os.path.abspath(args.workdir), 'step': step,
      'num_params': int(num_params), 'num_batches': args.num_batches,
      'kind': args.kind,
      'block': args.block, 'grad_seconds_per_batch': grad_s,
      'hvp_seconds_per_batch': hvp_s, 'hvp_cost_in_gradients': hvp_s / grad_s}
  print(f'one HVP costs {hvp_s / grad_s:.2f} gradients '
        f'({1e3 * hvp_s:.2f} ms per batch)', flush=True)
  key = jax.random.PRNGKey(args.seed)

  start = time.perf_counter()
  num_iters = args.num_iters or 3 * args.k + 30
  vals, _, info = top_eigenpairs(loss, state.params, batches, k=args.k,
                                 num_iters=num_iters, tol=args.tol, key=key,
                                 mask=args.block, return_info=True,
                                 progress=True, **matrix)
  result.update(eigenvalues=[float(v) for v in vals],
                eigenvalue_residuals=[float(r) for r in info['residuals']],
                eigen_hvps=info['num_hvps'],
                eigen_seconds=time.perf_counter() - start)
  print(f"top-{args.k}: {np.array2string(np.asarray(vals), precision=5)} "
        f"({info['num_hvps']} HVPs x {args.num_batches} batches, "
        f"{result['eigen_seconds']:.1f} s)", flush=True)
  if args.density:
    start = time.perf_counter()
    grid, density, dinfo = spectral_density(
        loss, state.params, batches, num_probes=args.num_probes,
        num_iters=args.density_iters, key=key, mask=args.block,
        return_info=True, progress=True, **matrix)
    result['density'] = {
        'grid': grid.tolist(), 'values': density.tolist(),
        'sigma': dinfo['sigma'], 'num_probes': args.num_probes,
        'num_iters': int(dinfo['nodes'].shape[1]),
        'nodes': dinfo['nodes'].tolist(), 'weights': dinfo['weights'].tolist()}
    result['density_hvps'] = dinfo['num_hvps']
    result['density_seconds'] = time.perf_counter() - start
    print(f"density: {dinfo['num_hvps']} HVPs x {args.num_batches} batches, "
          f"{result['density_seconds']:.1f} s", flush=True)
  if args.trace:
    start = time.perf_counter()
    estimate, stderr = trace(loss, state.params, batches,
                             num_probes=max(args.num_probes, 2), key=key,
                             mask=args.block, **matrix)
    result.update(trace=estimate, trace_stderr=stderr,
                  trace_seconds=time.perf_counter() - start)
    print(f'trace: {estimate:.5g} +- {stderr:.2g}', flush=True)

  out = args.out or args.workdir
  os.makedirs(out, exist_ok=True)
  json_path = os.path.join(out, f'hessian_{step}.json')
  with open(json_path, 'w') as f:
    json.dump(result, f)
  png_path = os.path.join(out, f'hessian_{step}.png')
  _plot(png_path, result)
  print(f'wrote {json_path} and {png_path}')
  return result


if __name__ == '__main__':
  main()
