r"""Pre-tokenized text on disk: shards of token ids read through memory maps.

A token directory (written by ``python -m experiments.prepare_text``) holds

* ``meta.json``: ``{"format": "dynamics-tokens", "version": 1, "dtype":
  "uint16" | "uint32", "vocab_size": V, "eos_id": E, "tokenizer": ...,
  "shards": [{"file", "split": "train" | "eval", "tokens", "max_id"}, ...]}``;
* one flat little-endian array of token ids per shard (``train_00000.bin``,
  ..., ``eval_00000.bin``); documents are concatenated, each followed by the
  EOS id.

Training examples are windows of ``seq_len + 1`` tokens (inputs and the
next-token targets) starting at multiples of ``seq_len`` inside one shard, so
every token is a target once per epoch. Window ``w`` of epoch ``e`` is drawn
through a seeded pseudo-random permutation of all windows
(`permutation_index`, a Feistel network: no table in memory however many
windows there are), so sample ``s`` of the stream is a pure function of
``(seed, s)``: batch ``i`` holds samples ``[i B, (i + 1) B)``, the data
position is one integer in the checkpoint and a resumed run reads the same
bits. A process of a multi-process run reads only its rows of each batch
(`TokenFiles.train_slice`). Evaluation reads the eval shards' windows in
order.

``packing='concat'`` (default) takes these windows across document
boundaries; ``'truncate'`` makes each document one padded example, the
padding masked (GaLore's C4 loader; `dynamics.data.documents`).
"""

import functools
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynamics.data.base import Batch, Dataset, DatasetInfo
from dynamics.data import documents
from dynamics.data.feistel import permutation_index  # noqa: F401  (re-exported)

META_FILE = 'meta.json'
FORMAT = 'dynamics-tokens'
DTYPES = ('uint16', 'uint32')
_SAMPLE = 1 << 16  # Tokens of each shard checked against the vocabulary.


class TokenDataError(ValueError):
  """A token directory that is missing, empty or inconsistent."""


def dtype_for(vocab_size: int) -> str:
  """The smallest shard dtype holding ids ``< vocab_size``.

  Example:
    >>> dtype_for(32_000), dtype_for(100_277)
    ('uint16', 'uint32')
  """
  return 'uint16' if vocab_size <= 1 << 16 else 'uint32'


def read_meta(path: Optional[str]) -> Dict[str, Any]:
  """``meta.json`` of the token directory ``path``, checked for completeness.

  Raises:
    TokenDataError: the directory or its ``meta.json`` is missing, the
      metadata is malformed, or it lists no train or no eval tokens.
  """
  if not path:
    raise TokenDataError('data.name=tokens needs the directory of token '
                         'shards: python -m experiments.prepare_text '
                         '--output=DIR, then --config.data.path=DIR')
  if not os.path.isdir(path):
    raise TokenDataError(f'{path} is not a directory')
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    partial = os.path.isfile(os.path.join(path, 'progress.json'))
    raise TokenDataError(
        f'{meta_path} is missing: ' + (
            'experiments.prepare_text did not finish; re-run it to resume'
            if partial else 'not a token directory (write one with python -m '
            'experiments.prepare_text)'))
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    ok = (meta['format'] == FORMAT and meta['dtype'] in DTYPES
          and int(meta['vocab_size']) > 0 and isinstance(meta['shards'], list))
  except (ValueError, KeyError, TypeError) as e:
    raise TokenDataError(f'{meta_path} is malformed ({e})') from None
  if not ok:
    raise TokenDataError(f'{meta_path}: not a {FORMAT} file or an unknown '
                         f'dtype (use one of {DTYPES})')
  for split in ('train', 'eval'):
    if not sum(s['tokens'] for s in meta['shards'] if s['split'] == split):
      raise TokenDataError(f'{meta_path} lists no {split} tokens')
  return meta


def check(path: Optional[str], seq_len: int,
          model_vocab_size: Optional[int] = None) -> Dict[str, Any]:
  """Checks a token directory against the run before anything compiles.

  Every shard file must exist with ``tokens * itemsize`` bytes (a dtype or
  count that disagrees with ``meta.json`` shows up as another size), hold at
  least ``seq_len + 1`` tokens, and have its recorded and sampled ids below
  the vocabulary (``meta.json``'s, and ``model_vocab_size`` when set: the
  embedding must have a row for every id).

  Returns:
    The metadata (`read_meta`).

  Raises:
    TokenDataError: naming the file and what disagrees.
  """
  meta = read_meta(path)
  itemsize = np.dtype(meta['dtype']).itemsize
  vocab = int(meta['vocab_size'])
  for shard in meta['shards']:
    file = os.path.join(path, shard['file'])
    n = int(shard['tokens'])
    if not os.path.isfile(file):
      raise TokenDataError(f'{file} is missing (listed in {META_FILE})')
    size = os.path.getsize(file)
    if size != n * itemsize:
      raise TokenDataError(
          f'{file} holds {size:,} bytes but {META_FILE} says {n:,} '
          f'{meta["dtype"]} tokens ({n * itemsize:,} bytes): the dtype or '
          'the token count disagrees')
    if n < seq_len + 1:
      raise TokenDataError(
          f'{file} holds {n:,} tokens, fewer than data.seq_len + 1 = '
          f'{seq_len + 1}: lower data.seq_len or prepare larger shards')
    sample_max = int(np.memmap(file, meta['dtype'], 'r', shape=(n,))
                     [:_SAMPLE].max())
    top = max(int(shard.get('max_id', 0)), sample_max)
    if top >= vocab:
      raise TokenDataError(f'{file} holds token id {top}, outside the '
                           f'vocabulary of {META_FILE} ({vocab})')
    if model_vocab_size is not None and top >= model_vocab_size:
      raise TokenDataError(
          f'{file} holds token id {top} but config.model.vocab_size='
          f'{model_vocab_size} has no embedding row for it (the data\'s '
          f'vocabulary is {vocab}; leave model.vocab_size None to use it)')
  return meta


class _Windows:
  """The windows of ``seq_len + 1`` tokens of some shards, by global index."""

  def __init__(self, files: Sequence[str], counts: Sequence[int], dtype: str,
               seq_len: int, vocab: int):
    self.seq_len, self.files, self.vocab = seq_len, list(files), vocab
    self.maps = [np.memmap(f, dtype, 'r', shape=(n,))
                 for f, n in zip(files, counts)]
    per_shard = [(n - 1) // seq_len for n in counts]
    self.starts = np.cumsum([0] + per_shard)
    self.count = int(self.starts[-1])

  def read(self, windows: np.ndarray) -> np.ndarray:
    """``(len(windows), seq_len + 1)`` int32 tokens of the given windows."""
    shard = np.searchsorted(self.starts, windows, side='right') - 1
    offsets = (windows - self.starts[shard]) * self.seq_len
    out = np.empty((len(windows), self.seq_len + 1), np.int32)
    width = self.seq_len + 1
    for row, (s, o) in enumerate(zip(shard.tolist(), offsets.tolist())):
      out[row] = self.maps[s][o:o + width]
    bad = np.flatnonzero((out >= self.vocab).any(axis=1))  # `check` samples.
    if bad.size:
      row = int(bad[0])
      col = int(np.argmax(out[row] >= self.vocab))
      raise TokenDataError(
          f'{self.files[shard[row]]} holds token id {out[row, col]} at token '
          f'{int(offsets[row]) + col:,}, outside the vocabulary of '
          f'{META_FILE} ({self.vocab})')
    return out


class TokenFiles(Dataset):
  """Next-token prediction on a token directory (module docstring).

  Attributes:
    meta: the directory's ``meta.json``.
    num_windows: training windows per epoch.
    read_windows: the window ids read by the latest `train_slice` (what a
      process of a multi-process run touched).
  """

  def __init__(self, path: str, seq_len: int, batch_size: int, seed: int,
               model_vocab_size: Optional[int] = None,
               packing: str = 'concat'):
    documents.check_packing(packing)
    self.path, self.seq_len, self.packing = path, seq_len, packing
    self.batch_size, self.seed = batch_size, seed
    self.meta = check(path, seq_len, model_vocab_size)
    split = {'train': ([], []), 'eval': ([], [])}
    for shard in self.meta['shards']:
      files, counts = split[shard['split']]
      files.append(os.path.join(path, shard['file']))
      counts.append(int(shard['tokens']))
    vocab = int(self.meta['vocab_size'])
    # Packed windows check every read against the vocabulary (a bad id names
    # its file); documents are checked by their own reader's sample.
    reader = (functools.partial(_Windows, vocab=vocab) if packing == 'concat'
              else functools.partial(documents.Documents,
                                     eos_id=int(self.meta['eos_id'])))
    self._train = reader(*split['train'], self.meta['dtype'], seq_len)
    self._eval = reader(*split['eval'], self.meta['dtype'], seq_len)
    self.num_windows = self._train.count
    self.read_windows = np.zeros((0,), np.int64)
    vocab = int(model_vocab_size or self.meta['vocab_size'])
    self.info = DatasetInfo(task='lm', num_outputs=vocab, vocab_size=vocab,
                            input_shape=(seq_len,))

  def train_windows(self, index: int, start: int = 0,
                    stop: Optional[int] = None) -> np.ndarray:
    """Window ids of rows ``[start, stop)`` of training batch ``index``."""
    stop = self.batch_size if stop is None else stop
    sample = index * self.batch_size + np.arange(start, stop, dtype=np.int64)
    epoch, position = np.divmod(sample, self.num_windows)
    out = np.empty_like(sample)
    for e in np.unique(epoch).tolist():  # A batch may straddle two epochs.
      rows = epoch == e
      out[rows] = permutation_index(position[rows], self.num_windows,
                                    self.seed, e)
    return out

  def train_slice(self, index: int, part: int, num_parts: int) -> Batch:
    """Rows of part ``part`` of ``num_parts`` of batch ``index``; only
    those windows are read (``np.array_split``'s contiguous parts)."""
    bounds = _split_bounds(self.batch_size, num_parts)
    self.read_windows = self.train_windows(index, bounds[part],
                                           bounds[part + 1])
    return self._batch(self._train, self.read_windows)

  def _batch(self, reader, ids):  # Documents give the mask with the pair.
    out = reader.read(ids)
    return out if isinstance(out, dict) else _pair(out)

  def train_batch(self, index: int) -> Batch:
    return self.train_slice(index, 0, 1)

  def eval_batch(self, index: int) -> Batch:
    windows = (index * self.batch_size
               + np.arange(self.batch_size, dtype=np.int64)) % self._eval.count
    return self._batch(self._eval, windows)


def _pair(seq: np.ndarray) -> Batch:
  return {'inputs': seq[:, :-1], 'targets': seq[:, 1:]}


def _split_bounds(total: int, parts: int) -> List[int]:
  """Boundaries of ``np.array_split(range(total), parts)``."""
  size, extra = divmod(total, parts)
  return [i * size + min(i, extra) for i in range(parts + 1)]


def shard_name(split: str, number: int) -> str:
  """``train_00003.bin``: the file name of a split's shard."""
  return f'{split}_{number:05d}.bin'


def write_meta(path: str, meta: Dict[str, Any], name: str = META_FILE) -> None:
  """Writes ``meta`` as ``path/name`` atomically (temporary file, rename)."""
  target = os.path.join(path, name)
  with open(target + '.tmp', 'w') as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  os.replace(target + '.tmp', target)


def write_synthetic(path: str, n_tokens: int, vocab: int = 32_000,
                    eval_tokens: int = 1_000_000) -> str:
  """A token directory of uniform random ids (two train shards, one eval
  shard) at ``path``, for benchmarks; returns ``path``."""
  rng = np.random.default_rng(0)
  dtype, shards = dtype_for(vocab), []
  for split, number, n in (('train', 0, n_tokens // 2),
                           ('train', 1, n_tokens - n_tokens // 2),
                           ('eval', 0, eval_tokens)):
    name = shard_name(split, number)
    rng.integers(0, vocab, n, dtype=dtype).tofile(os.path.join(path, name))
    shards.append({'file': name, 'split': split, 'tokens': n,
                   'max_id': vocab - 1})
  write_meta(path, {'format': FORMAT, 'version': 1, 'dtype': dtype,
                    'vocab_size': vocab, 'eos_id': 0,
                    'tokenizer': 'synthetic', 'shards': shards})
  return path


def token_counts(meta: Dict[str, Any]) -> Tuple[int, int]:
  """``(train tokens, eval tokens)`` of a directory's metadata."""
  count = {'train': 0, 'eval': 0}
  for shard in meta['shards']:
    count[shard['split']] += int(shard['tokens'])
  return count['train'], count['eval']


class ShardWriter:
  """Cuts a token stream into shards of a token directory, recording after
  each shard what is written (``state['shards']``) and where the input
  stands (``state['position'][split]``) in ``progress_file``.

  ``state`` holds at least ``dtype``, ``shards`` and ``position``; the
  ``on_shard(state)`` callback runs after each record (tests interrupt
  there). `discard_unrecorded` undoes what an interrupted writer left beyond
  its last record.
  """

  def __init__(self, path: str, state: Dict[str, Any], progress_file: str,
               on_shard: Optional[Callable[[Dict[str, Any]], None]] = None):
    self.path, self.state, self.progress_file = path, state, progress_file
    self.on_shard, self.buffer, self.count = on_shard, [], 0

  def add(self, ids: np.ndarray) -> None:
    self.buffer.append(ids)
    self.count += len(ids)

  def cut(self, split: str, position: Sequence[int], append: bool = False
          ) -> None:
    """Writes the buffer as a new shard of ``split`` (``append``: onto the
    last shard), and records ``position`` as where ``split`` resumes."""
    data = np.concatenate(self.buffer).astype(self.state['dtype'])
    shards = self.state['shards']
    if append:
      last = shards[-1]
      with open(os.path.join(self.path, last['file']), 'ab') as f:
        f.write(data.tobytes())
      last['tokens'] += len(data)
      last['max_id'] = max(last['max_id'], int(data.max()))
    else:
      name = shard_name(split, sum(s['split'] == split for s in shards))
      file = os.path.join(self.path, name)
      data.tofile(file + '.tmp')
      os.replace(file + '.tmp', file)
      shards.append({'file': name, 'split': split, 'tokens': len(data),
                     'max_id': int(data.max())})
    self.state['position'][split] = list(position)
    self.buffer, self.count = [], 0
    write_meta(self.path, self.state, self.progress_file)
    if self.on_shard is not None:
      self.on_shard(self.state)


def discard_unrecorded(path: str, state: Dict[str, Any]) -> None:
  """Removes shard files ``state`` does not record and truncates recorded
  ones to their recorded length (an append cut short)."""
  recorded = {s['file']: int(s['tokens']) for s in state['shards']}
  itemsize = np.dtype(state['dtype']).itemsize
  for name in os.listdir(path):
    file = os.path.join(path, name)
    ours = name.startswith(('train_', 'eval_'))
    if ours and name.endswith(('.bin', '.bin.tmp')) and name not in recorded:
      os.remove(file)
    elif name in recorded and os.path.getsize(file) > recorded[name] * itemsize:
      with open(file, 'r+b') as f:
        f.truncate(recorded[name] * itemsize)
