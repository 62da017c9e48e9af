"""What identifies the data of a token directory, whatever its path.

A run on token files records their manifest (`manifest`: shard names,
splits, token counts, sizes and a cheap content hash per shard, from
``meta.json`` and the files); a resume and a branch compare it with the data
at ``config.data.path`` (`manifest_difference`). The same data moved, staged
to node-local scratch or named by a relative path resumes (the new path is
recorded in ``resumes.jsonl``); other data re-prepared at the same path is
refused, naming the shard that differs.
"""

import hashlib
import os
from typing import Any, Dict, Mapping, Optional

from dynamics.data.tokens import META_FILE, TokenDataError, read_meta

_HASHED = 1 << 16  # Bytes hashed at each end and the middle of a shard.


def _sample_hash(file: str, size: int) -> str:
  """A cheap content hash: blake2b of 64 KiB at the start, middle and end
  (a reshuffled shard of the same size differs there almost surely)."""
  h = hashlib.blake2b(digest_size=16)
  with open(file, 'rb') as f:
    for start in sorted({0, max(0, size // 2 - _HASHED // 2),
                         max(0, size - _HASHED)}):
      f.seek(start)
      h.update(f.read(_HASHED))
  return h.hexdigest()


def manifest(path: str) -> Dict[str, Any]:
  """``{'dtype', 'vocab_size', 'shards': [{'file', 'split', 'tokens',
  'bytes', 'hash'}, ...]}`` of the token directory ``path``.

  Raises:
    TokenDataError: as `dynamics.data.tokens.read_meta`, or a listed shard
      is missing.
  """
  meta = read_meta(path)
  shards = []
  for shard in meta['shards']:
    file = os.path.join(path, shard['file'])
    if not os.path.isfile(file):
      raise TokenDataError(f'{file} is missing (listed in {META_FILE})')
    size = os.path.getsize(file)
    shards.append({'file': shard['file'], 'split': shard['split'],
                   'tokens': int(shard['tokens']), 'bytes': size,
                   'hash': _sample_hash(file, size)})
  return {'dtype': meta['dtype'], 'vocab_size': int(meta['vocab_size']),
          'shards': shards}


def manifest_difference(recorded: Mapping[str, Any],
                        current: Mapping[str, Any]) -> Optional[str]:
  """What differs between two `manifest` records, naming the first shard
  that differs; None for the same data.

  Example:
    >>> a = {'dtype': 'uint16', 'vocab_size': 9, 'shards': [
    ...     {'file': 'train_0.bin', 'split': 'train', 'tokens': 4,
    ...      'bytes': 8, 'hash': 'x'}]}
    >>> b = {**a, 'shards': [{**a['shards'][0], 'hash': 'y'}]}
    >>> manifest_difference(a, a) is None, manifest_difference(a, b)
    (True, "shard train_0.bin differs (hash: 'x' -> 'y')")
  """
  for key in ('dtype', 'vocab_size'):
    if recorded.get(key) != current.get(key):
      return f'{key}: {recorded.get(key)!r} -> {current.get(key)!r}'
  old = {s['file']: s for s in recorded['shards']}
  new = {s['file']: s for s in current['shards']}
  for name in [*old, *(n for n in new if n not in old)]:  # Recorded order.
    if name not in new:
      return f'shard {name} is missing'
    if name not in old:
      return f'shard {name} is new'
    for key in ('split', 'tokens', 'bytes', 'hash'):
      if old[name].get(key) != new[name].get(key):
        return (f'shard {name} differs ({key}: {old[name].get(key)!r} -> '
                f'{new[name].get(key)!r})')
  return None
