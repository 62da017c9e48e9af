"""Documents as examples (``data.packing``).

``packing`` chooses how documents become examples:

* ``'concat'`` (default; nanoGPT, OLMo): `dynamics.data.tokens`' windows, across document
  boundaries -- every token is a target;
* ``'truncate'`` (GaLore's and Stable-SPAM's C4 loader: HF ``tokenizer(...,
  max_length=seq_len, truncation=True, padding='max_length')``): example
  ``i`` is document ``i``'s first ``seq_len`` tokens (its EOS included when
  it fits), padded; the targets are the next tokens, and the batch's
  ``mask`` is 0 at the last position and on padding (the HF loss's -100
  labels), so a document of ``n < seq_len`` tokens gives ``n - 1`` targets.
  The documents are found by their EOS ids, one pass over the shards at
  start; training draws documents through the same seeded permutation.
"""

from typing import Sequence

import numpy as np

from dynamics.data.base import Batch

PACKINGS = ('concat', 'truncate')


def check_packing(packing: str) -> None:
  """Raises ``ValueError`` naming ``data.packing`` for an unknown value."""
  if packing not in PACKINGS:
    raise ValueError(f'data.packing must be one of {PACKINGS}, '
                     f'got {packing!r}')


class Documents:
  """The EOS-terminated documents of some token shards, each one example:
  its first ``seq_len`` tokens, padded (``data.packing='truncate'``; see
  `dynamics.data.tokens`).

  Attributes:
    count: the number of documents (a trailing piece without EOS is one).
    shard, start: each document's shard and first token.
  """

  def __init__(self, files: Sequence[str], counts: Sequence[int], dtype: str,
               seq_len: int, eos_id: int, block: int = 1 << 24):
    self.seq_len = seq_len
    self.maps = [np.memmap(f, dtype, 'r', shape=(n,))
                 for f, n in zip(files, counts)]
    shard, start = [], []
    for i, m in enumerate(self.maps):
      ends = [np.flatnonzero(m[o:o + block] == eos_id) + o
              for o in range(0, len(m), block)]
      ends = np.concatenate(ends + [np.zeros((0,), np.int64)]).astype(np.int64)
      starts = np.concatenate([[0], ends + 1])
      starts = starts[starts < len(m)]  # A trailing EOS starts nothing.
      shard.append(np.full(len(starts), i, np.int64))
      start.append(starts)
    self.shard = np.concatenate(shard)
    self.start = np.concatenate(start)
    self.count = len(self.start)

  def read(self, docs: np.ndarray) -> Batch:
    """Inputs, targets and mask of the given documents (module doc)."""
    n, t = len(docs), self.seq_len
    seq = np.zeros((n, t + 1), np.int32)
    lengths = np.zeros((n,), np.int64)
    for row, d in enumerate(docs.tolist()):
      m, s = self.maps[self.shard[d]], self.start[d]
      nxt = self.start[d + 1] if (d + 1 < self.count and
                                  self.shard[d + 1] == self.shard[d]) else len(m)
      piece = m[s:min(nxt, s + t)]
      seq[row, :len(piece)] = piece
      lengths[row] = len(piece)
    mask = np.arange(t)[None, :] < (lengths[:, None] - 1)
    return {'inputs': seq[:, :-1], 'targets': seq[:, 1:],
            'mask': mask.astype(np.float32)}
