r"""Permutation alignment by weight matching (Ainsworth et al. 2023).

Permuting the hidden units of a layer -- the output axis of its kernel and
bias, its norm's parameters and statistics, and the input axis of the next
kernel -- leaves the network's function unchanged. Weight matching looks for
the permutations :math:`\pi = \{P_\ell\}` of model B that bring its weights
closest to model A's,

.. math::
  \max_\pi \sum_\ell \langle W^A_\ell,\; P_\ell W^B_\ell P_{\ell-1}^\top
  \rangle_F ,

by coordinate descent: with every other permutation fixed, the best
:math:`P_\ell` is a linear assignment problem,
:math:`\max_P \langle P, \sum_{w \ni \ell} W^A_{(\ell)} (W^B_{(\ell)})^\top
\rangle` over every weight ``w`` that has an axis permuted by
:math:`P_\ell` (each matricized with that axis first, the other axes already
permuted), solved exactly by ``scipy.optimize.linear_sum_assignment``.
Permutations are visited in a random order and the sweep repeats until none
improves (the authors' released code does the same).

A *permutation spec* names, for every parameter, the permutation acting on
each of its axes (None: not permuted): ``{'dense_0/kernel': (None, 'P_0'),
...}``. Specs are built from parameter names (`spec_for`):

* MLP (``dense_i``, ``norm_i``, ``head``): one permutation per hidden layer.
* CNN (``conv_i``, ``norm_i``, ``head``): one per layer's channels; the
  batch-norm statistics ``norm_i/mean``, ``norm_i/var`` follow them
  (`permute` a model state with the same spec).
* Transformer (``embed``, ``block_i``, ``head``): the residual stream is one
  permutation ``res`` shared by the embeddings, every norm, every residual
  write (``attn/out``, ``mlp/fc_out``) and read (``qkv``, ``fc_in``, the
  head); each MLP block's hidden units have their own ``mlp_i``; attention
  heads are permuted as whole heads (``heads_i`` on the head axis of
  ``qkv`` and ``out``), never within a head, so rotary embeddings and
  per-head norms are untouched. Layer norm's mean and variance are
  invariant to a permutation of the features, so the function is unchanged.

References:
  Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo
  Permutation Symmetries" (ICLR 2023), Algorithm 2.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from scipy import optimize

from dynamics import types
from dynamics.types import PyTree

Spec = Dict[str, Tuple[Optional[str], ...]]
Perms = Dict[str, np.ndarray]


def _named(tree: PyTree) -> Dict[str, np.ndarray]:
  return {types.param_name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layer_spec(names, ndims, unit: str, kernel_axes: int) -> Spec:
  """MLP / CNN: layers ``{unit}_i`` feeding ``norm_i`` and then ``head``."""
  indices = sorted({int(m.group(1)) for n in names
                    if (m := re.match(rf'{unit}_(\d+)/', n))})
  spec: Spec = {}
  for n in names:
    m = re.match(rf'({unit}|norm)_(\d+)/(\w+)$', n)
    if m:
      i, leaf = int(m.group(2)), m.group(3)
      p = f'P_{i}'
      if leaf == 'kernel':
        prev = f'P_{indices[indices.index(i) - 1]}' if indices.index(i) else None
        spec[n] = (None,) * (kernel_axes - 2) + (prev, p)
      else:  # bias, norm scale and bias, batch statistics mean and var.
        spec[n] = (p,)
    elif n == 'head/kernel':
      spec[n] = (f'P_{indices[-1]}' if indices else None, None)
    elif n == 'head/bias':
      spec[n] = (None,)
    else:
      raise ValueError(f'params: no permutation rule for {n!r}')
  for n, axes in spec.items():
    if len(axes) != ndims[n]:
      raise ValueError(f'params: {n!r} has {ndims[n]} axes, expected '
                       f'{len(axes)}')
  return spec


_TRANSFORMER_RULES = (
    (r'embed/embedding', (None, 'res')),
    (r'pos_embed', (None, 'res')),
    (r'(block_\d+/)?norm_\w+/(scale|bias)', ('res',)),
    (r'block_(\d+)/attn/qkv/kernel', ('res', None, 'heads_{}', None)),
    (r'block_(\d+)/attn/qkv/bias', (None, 'heads_{}', None)),
    (r'block_(\d+)/attn/out/kernel', ('heads_{}', None, 'res')),
    (r'block_\d+/attn/out/bias', ('res',)),
    (r'block_\d+/attn/\w+_norm/\w+', (None,)),  # Per head dimension.
    (r'block_(\d+)/mlp/fc_in/kernel', ('res', 'mlp_{}')),
    (r'block_(\d+)/mlp/fc_in/bias', ('mlp_{}',)),
    (r'block_(\d+)/mlp/fc_out/kernel', ('mlp_{}', 'res')),
    (r'block_\d+/mlp/fc_out/bias', ('res',)),
    (r'head/kernel', ('res', None)),
    (r'head/bias', (None,)),
)


def _transformer_spec(names, ndims) -> Spec:
  spec: Spec = {}
  for n in names:
    for pattern, axes in _TRANSFORMER_RULES:
      m = re.fullmatch(pattern, n)
      if m:
        index = m.group(1) if m.groups() and m.group(1) else ''
        spec[n] = tuple(a.format(index.rstrip('/').split('_')[-1])
                        if a and '{}' in a else a for a in axes)
        break
    else:
      raise ValueError(f'params: no permutation rule for {n!r}')
    if len(spec[n]) != ndims[n]:
      raise ValueError(f'params: {n!r} has {ndims[n]} axes, expected '
                       f'{len(spec[n])}')
  return spec


def spec_for(params: PyTree) -> Spec:
  """The permutation spec of an MLP, a CNN or a transformer, by names.

  Raises:
    ValueError: a family without a rule (e.g. the ResNet, a gated MLP
      block), naming the parameter.
  """
  named = _named(params)
  names, ndims = list(named), {n: x.ndim for n, x in named.items()}
  if any(n.startswith('embed/') for n in names):
    for n in names:
      if n.endswith('mlp/fc_in/kernel') and any(
          k.endswith('mlp/fc_out/kernel') and named[k].shape[0] * 2 ==
          named[n].shape[1] for k in names):
        raise ValueError(f'params: {n!r} is a gated (SwiGLU) MLP block; '
                         'weight matching supports plain MLP blocks only')
    return _transformer_spec(names, ndims)
  if any(n.startswith('conv_') for n in names):
    return _layer_spec(names, ndims, 'conv', 4)
  if any(n.startswith('dense_') for n in names) or names == [
      'head/bias', 'head/kernel']:
    return _layer_spec(names, ndims, 'dense', 2)
  raise ValueError(f'params: no permutation spec for a model with '
                   f'parameters {names[:4]}...; supported: MLP, CNN, '
                   'transformer')


def stats_spec(spec: Spec) -> Spec:
  """The spec extended to batch-norm statistics (``norm_i/mean``, ``/var``)."""
  out = dict(spec)
  for n, axes in spec.items():
    m = re.match(r'(.*norm_\d+)/scale$', n)
    if m:
      out[f'{m.group(1)}/mean'] = out[f'{m.group(1)}/var'] = axes
  return out


def _take(w: np.ndarray, axes, perms: Perms, skip: Optional[int] = None):
  for ax, p in enumerate(axes):
    if p is not None and ax != skip:
      w = np.take(w, perms[p], axis=ax)
  return w


def permute(tree: PyTree, spec: Spec, perms: Perms) -> PyTree:
  """``tree`` with unit ``i`` of each permuted axis taken from unit
  ``perms[p][i]``; leaves the spec does not name are unchanged (so a model
  state's ``batch_stats`` can be permuted with `stats_spec`)."""
  spec = stats_spec(spec)

  def one(path, x):
    axes = spec.get(types.param_name(path))
    if axes is None:
      return x
    out = _take(np.asarray(x), axes, perms)
    return out if isinstance(x, np.ndarray) else jax.numpy.asarray(out)

  return jax.tree_util.tree_map_with_path(one, tree)


def perm_sizes(params: PyTree, spec: Spec) -> Dict[str, int]:
  """The size of each permutation of ``spec``."""
  named = _named(params)
  sizes = {}
  for n, axes in spec.items():
    for ax, p in enumerate(axes):
      if p is not None and n in named:
        if sizes.setdefault(p, named[n].shape[ax]) != named[n].shape[ax]:
          raise ValueError(f'params: {n!r} axis {ax} has size '
                           f'{named[n].shape[ax]}, but {p} has {sizes[p]}')
  return sizes


def assignment_scores(named_a, named_b, spec: Spec, perms: Perms, p: str,
                      n: int) -> np.ndarray:
  r"""The ``(n, n)`` matrix :math:`\sum_w W^A_{(p)} (W^B_{(p)})^\top` of the
  sub-problem of permutation ``p`` (others fixed at ``perms``)."""
  scores = np.zeros((n, n))
  for name, axes in spec.items():
    if name not in named_a:
      continue
    for ax, q in enumerate(axes):
      if q == p:
        wa = np.moveaxis(named_a[name], ax, 0).reshape(n, -1)
        wb = np.moveaxis(_take(named_b[name], axes, perms, skip=ax), ax, 0)
        scores += wa @ wb.reshape(n, -1).T
  return scores


def weight_matching(params_a: PyTree, params_b: PyTree,
                    spec: Optional[Spec] = None, *, max_iter: int = 100,
                    seed: int = 0) -> Perms:
  """Permutations of B's units that best match A's weights (Algorithm 2).

  Args:
    params_a, params_b: two parameter trees of one architecture.
    spec: the permutation spec (default `spec_for(params_a)`).
    max_iter: sweeps over all permutations at most.
    seed: the order in which permutations are visited.

  Returns:
    ``{perm name: index array}``; `permute` ``(params_b, spec, perms)``
    applies them.
  """
  spec = spec_for(params_a) if spec is None else spec
  a = {k: v.astype(np.float64) for k, v in _named(params_a).items()}
  b = {k: v.astype(np.float64) for k, v in _named(params_b).items()}
  if {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
    raise ValueError('params_b: the two models have different parameter '
                     'shapes or names; alignment needs one architecture')
  sizes = perm_sizes(params_a, spec)
  perms = {p: np.arange(n) for p, n in sizes.items()}
  rng = np.random.default_rng(seed)
  for _ in range(max_iter):
    improved = False
    for p in rng.permutation(sorted(sizes)):
      scores = assignment_scores(a, b, spec, perms, p, sizes[p])
      rows, cols = optimize.linear_sum_assignment(scores, maximize=True)
      del rows  # 0..n-1 for a square problem.
      old = scores[np.arange(sizes[p]), perms[p]].sum()
      new = scores[np.arange(sizes[p]), cols].sum()
      if new > old + 1e-12 * max(abs(old), 1.0):
        perms[p], improved = cols, True
    if not improved:
      break
  return perms


def align(params_a: PyTree, params_b: PyTree, spec: Optional[Spec] = None, *,
          max_iter: int = 100, seed: int = 0) -> PyTree:
  """``params_b`` with its hidden units permuted to match ``params_a``.

  The result computes exactly the same function as ``params_b`` (up to
  float round-off from nothing: only indexing); for a batch-norm model,
  permute its model state too: ``permute(state, spec, weight_matching(...))``.

  Example:
    >>> a = {'dense_0': {'kernel': np.array([[1., 2.], [3., 4.]]),
    ...                  'bias': np.array([0.5, -0.5])},
    ...      'head': {'kernel': np.array([[1.], [-1.]]), 'bias': np.zeros(1)}}
    >>> b = permute(a, spec_for(a), {'P_0': np.array([1, 0])})  # Swapped.
    >>> b['dense_0']['kernel'].tolist()
    [[2.0, 1.0], [4.0, 3.0]]
    >>> align(a, b)['dense_0']['kernel'].tolist()
    [[1.0, 2.0], [3.0, 4.0]]
  """
  spec = spec_for(params_a) if spec is None else spec
  perms = weight_matching(params_a, params_b, spec, max_iter=max_iter,
                          seed=seed)
  return permute(params_b, spec, perms)
