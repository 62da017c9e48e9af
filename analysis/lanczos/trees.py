"""Vector algebra on pytrees, and stacks of pytrees laid out like the parameters.

Krylov solvers never flatten the parameters: a vector is a pytree shaped like
``params_like`` and a basis of ``m`` vectors is the same pytree with a leading
axis of length ``m`` on every leaf. Each leaf of a basis is then laid out like
its parameter (`stack_shardings`): split over ``fsdp`` where the parameter is,
so no device ever holds the whole basis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dynamics.types import PyTree


def size(tree: PyTree) -> int:
  """Number of scalars in ``tree`` (works on ``ShapeDtypeStruct`` leaves)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64)
                 for x in jax.tree.leaves(tree)))


def vector_dtype(params_like: PyTree, dtype: Any = None) -> np.dtype:
  """The solvers' dtype: ``dtype`` if given, else the parameters' (>= f32).

  Raises:
    ValueError: float64 asked for without 64-bit JAX.
  """
  if dtype is None:
    dtypes = [np.dtype(x.dtype) for x in jax.tree.leaves(params_like)]
    dtype = jnp.result_type(jnp.float32, *dtypes)
  dtype = np.dtype(dtype)
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError(
        'dtype=float64 needs 64-bit JAX: wrap the call in '
        '`with jax.enable_x64(True):` or set JAX_ENABLE_X64=1.')
  return dtype


def cast(tree: PyTree, dtype: Any) -> PyTree:
  return jax.tree.map(lambda x: x.astype(dtype), tree)


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
  return jax.tree.map(lambda x, p: x.astype(p.dtype), tree, like)


def dot(a: PyTree, b: PyTree) -> jax.Array:
  """``<a, b>`` summed over leaves."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def norm(a: PyTree) -> jax.Array:
  return jnp.sqrt(dot(a, a))


def axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  """``alpha * x + y``."""
  return jax.tree.map(lambda u, v: alpha.astype(v.dtype) * u + v, x, y)


def scale(alpha: jax.Array, x: PyTree) -> PyTree:
  return jax.tree.map(lambda u: alpha.astype(u.dtype) * u, x)


def all_finite(a: PyTree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(a)]))


def rows_dot(stack: PyTree, w: PyTree) -> jax.Array:
  """``(m,)`` inner products of each row of ``stack`` with ``w``."""
  return sum(jnp.tensordot(s, x, axes=x.ndim) for s, x in
             zip(jax.tree.leaves(stack), jax.tree.leaves(w)))


def combine(coeffs: jax.Array, stack: PyTree) -> PyTree:
  """``sum_r coeffs[r] * stack[r]`` (``coeffs`` (m,)), or a stack of such
  combinations for ``coeffs`` (p, m)."""
  return jax.tree.map(
      lambda s: jnp.tensordot(coeffs.astype(s.dtype), s, axes=1), stack)


def normal(key: jax.Array, like: PyTree, dtype: Any) -> PyTree:
  """A standard normal pytree shaped like ``like``."""
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, np.shape(x), dtype) for k, x in zip(keys, leaves)])


def mix(x: jax.Array) -> jax.Array:
  """A 32-bit integer mixer (lowbias32): consecutive inputs, unrelated outputs."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hashed_signs(seed: jax.Array, like: PyTree, dtype: Any) -> PyTree:
  """Pseudo-random signs shaped like ``like`` from a 32-bit ``seed``.

  A counter hash: a handful of integer ops per entry, compiled in
  milliseconds (``jax.random`` costs about a second of compilation per call
  site on a slow CPU), and independent of how the leaves are laid out.
  """
  leaves, treedef = jax.tree.flatten(like)
  seed = mix(jnp.asarray(seed, jnp.uint32) + jnp.uint32(0x9E3779B9))
  out, offset = [], 0
  for x in leaves:
    shape = np.shape(x)
    count = int(np.prod(shape, dtype=np.int64))
    index = jax.lax.iota(jnp.uint32, max(count, 1))[:count] + jnp.uint32(
        offset % 2 ** 32)
    bits = mix(mix(index ^ seed) + seed)
    sign = 1 - 2 * (bits >> 31).astype(jnp.int32)
    out.append(sign.astype(dtype).reshape(shape))
    offset += count
  return jax.tree.unflatten(treedef, out)


def host_signs(seed: int, size: int, dtype: Any) -> np.ndarray:
  """`hashed_signs` of a flat vector, computed on the host (the same signs)."""
  def mix_np(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))
  with np.errstate(over='ignore'):
    seed = mix_np(np.uint32(seed) + np.uint32(0x9E3779B9))
    bits = mix_np(mix_np(np.arange(size, dtype=np.uint32) ^ seed) + seed)
  return (1 - 2 * (bits >> np.uint32(31)).astype(np.int32)).astype(dtype)


def host_key_seed(key: jax.Array, salt: int = 0) -> int:
  """`key_seed` on the host."""
  data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
      key.dtype, jax.dtypes.prng_key) else key).astype(np.uint32).reshape(-1)
  def mix_np(x):
    x = np.uint32(x)
    x = x ^ (x >> np.uint32(16))
    x = np.uint32((int(x) * 0x7FEB352D) % 2 ** 32)
    x = x ^ (x >> np.uint32(15))
    x = np.uint32((int(x) * 0x846CA68B) % 2 ** 32)
    return x ^ (x >> np.uint32(16))
  return int(mix_np(mix_np(data[0] ^ np.uint32(salt)) ^ data[-1]))


def key_seed(key: jax.Array, salt: jax.Array | int = 0) -> jax.Array:
  """A 32-bit seed from a PRNG key (and a counter), without ``jax.random``."""
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(
      key.dtype, jax.dtypes.prng_key) else key
  data = data.astype(jnp.uint32).reshape(-1)
  return mix(mix(data[0] ^ jnp.asarray(salt, jnp.uint32)) ^ data[-1])


def rademacher(key: jax.Array, like: PyTree, dtype: Any) -> PyTree:
  """A pytree of independent random signs shaped like ``like``."""
  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.rademacher(k, np.shape(x), dtype)
      for k, x in zip(keys, leaves)])


def zeros_stack(m: int, like: PyTree, dtype: Any) -> PyTree:
  return jax.tree.map(lambda x: jnp.zeros((m,) + np.shape(x), dtype), like)


def stack_shardings(like: PyTree) -> tuple | None:
  """Per leaf, the sharding of a stack of vectors laid out like ``like``.

  A leaf of ``like`` with a multi-device `NamedSharding` ``P(*spec)`` gives
  ``P(None, *spec)`` (the stack axis replicated, the parameter axes split as
  the parameter is); other leaves give None. Returns None when no leaf is
  sharded (one device), so that single-device code is unchanged.
  """
  out, any_sharded = [], False
  for x in jax.tree.leaves(like):
    sharding = getattr(x, 'sharding', None)
    if (isinstance(sharding, NamedSharding) and
        len(sharding.mesh.devices.flat) > 1):
      spec = tuple(sharding.spec) + (None,) * (np.ndim(x) - len(sharding.spec))
      out.append((NamedSharding(sharding.mesh, P(*spec)),
                  NamedSharding(sharding.mesh, P(None, *spec))))
      any_sharded = True
    else:
      out.append(None)
  return tuple(out) if any_sharded else None


def constrain(tree: PyTree, shardings: Sequence | None, stacked: bool) -> PyTree:
  """Pins each leaf of ``tree`` (a vector, or a stack if ``stacked``) to its
  parameter's layout (see `stack_shardings`); a no-op on one device."""
  if shardings is None:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  pinned = [x if s is None else
            jax.lax.with_sharding_constraint(x, s[1] if stacked else s[0])
            for x, s in zip(leaves, shardings)]
  return jax.tree.unflatten(treedef, pinned)
