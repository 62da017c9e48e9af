"""The seeded pseudo-random order in which token windows are read: a Feistel
permutation of ``range(n)`` evaluated at any index, with no table (NumPy only)."""

import numpy as np

from dynamics.data.base import _TRAIN, _rng

_ROUNDS = 6  # Feistel rounds.


def permutation_index(index: np.ndarray, n: int, seed: int, epoch: int
                      ) -> np.ndarray:
  """``perm[index]`` for a seeded pseudo-random permutation ``perm`` of
  ``range(n)``, without building ``perm``.

  A balanced Feistel network on ``2k``-bit integers (``4^k >= n``), a
  bijection whatever its round function, restricted to ``[0, n)`` by cycle
  walking (values that land outside are permuted again, at most ~4 times on
  average). Different ``(seed, epoch)`` give independent orders.

  Args:
    index: integer array of positions in ``[0, n)``.
    n: the permutation's size (>= 1).
    seed, epoch: select the permutation.

  Returns:
    An int64 array shaped like ``index``.

  Example:
    >>> p = permutation_index(np.arange(10), 10, seed=0, epoch=0)
    >>> sorted(p.tolist()) == list(range(10)), p.tolist() != list(range(10))
    (True, True)

  References:
    Luby and Rackoff, "How to Construct Pseudorandom Permutations from
    Pseudorandom Functions", SIAM J. Computing 1988; Black and Rogaway,
    "Ciphers with Arbitrary Finite Domains" (cycle walking), CT-RSA 2002.
  """
  index = np.asarray(index, np.int64)
  if n <= 1:
    return np.zeros_like(index)
  half = max(1, (int(n - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half) - 1)
  keys = _rng(seed, _TRAIN, 0xFE15, epoch).integers(
      0, 1 << 63, _ROUNDS, dtype=np.uint64)

  def feistel(x):
    left, right = x >> np.uint64(half), x & mask
    for key in keys:
      left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << np.uint64(half)) | right

  out = feistel(index.astype(np.uint64))
  outside = out >= n
  while outside.any():
    out[outside] = feistel(out[outside])
    outside = out >= n
  return out.astype(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: a fast, well-mixing hash of uint64s."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))
