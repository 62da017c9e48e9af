"""Token files: the permutation, the windows, process slices, and bad input.

Token directories are written here directly in the format of
``dynamics/data/tokens.py`` (known token values, so every batch can be
checked exactly); ``tests/test_prepare_text.py`` tests the command that
writes them from text.
"""

import json
import os

import numpy as np
import pytest

from configs import wsd
from dynamics import config_lib, data
from dynamics.data import tokens


def write_dir(path, train_counts=(1000, 700), eval_count=300, dtype='uint16',
              vocab=4096, **meta_overrides):
  """A token directory whose token at global position ``i`` of a split is
  ``i % vocab`` (train shards continue each other's count)."""
  os.makedirs(path, exist_ok=True)
  shards, start = [], 0
  for split, counts in (('train', train_counts), ('eval', (eval_count,))):
    for number, n in enumerate(counts):
      ids = (np.arange(start, start + n) % vocab).astype(dtype)
      name = tokens.shard_name(split, number)
      ids.tofile(os.path.join(path, name))
      shards.append({'file': name, 'split': split, 'tokens': n,
                     'max_id': int(ids.max(initial=0))})
      start += n
  meta = {'format': tokens.FORMAT, 'version': 1, 'dtype': dtype,
          'vocab_size': vocab, 'eos_id': vocab - 1, 'tokenizer': 'test',
          'shards': shards, **meta_overrides}
  tokens.write_meta(path, meta)
  return str(path)


@pytest.mark.parametrize('n', [1, 2, 7, 64, 1000, 4097])
def test_permutation_is_a_bijection_that_depends_on_seed_and_epoch(n):
  perm = tokens.permutation_index(np.arange(n), n, seed=3, epoch=0)
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  if n >= 64:
    other_epoch = tokens.permutation_index(np.arange(n), n, seed=3, epoch=1)
    other_seed = tokens.permutation_index(np.arange(n), n, seed=4, epoch=0)
    # Shuffled, and differently per epoch and seed (a few fixed points at most).
    assert np.mean(perm == np.arange(n)) < 0.1
    assert np.mean(perm == other_epoch) < 0.1
    assert np.mean(perm == other_seed) < 0.1
    # Any subset of positions maps to the same windows as the whole.
    np.testing.assert_array_equal(
        tokens.permutation_index(np.arange(5, 9), n, 3, 0), perm[5:9])


def test_an_epoch_reads_every_window_once_and_targets_are_next_tokens(tmp_path):
  path = write_dir(tmp_path / 'd')
  ds = tokens.TokenFiles(path, seq_len=16, batch_size=4, seed=0)
  # Windows of 17 tokens at multiples of 16, inside each shard.
  assert ds.num_windows == 999 // 16 + 699 // 16 == 62 + 43
  starts = []
  for i in range(ds.num_windows // 4):
    b = ds.train_batch(i)
    np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
    # Consecutive token values: no window crosses a shard boundary.
    seq = np.concatenate([b['inputs'], b['targets'][:, -1:]], axis=1)
    np.testing.assert_array_equal(np.diff(seq, axis=1), 1)
    starts += list(b['inputs'][:, 0])
  expected = [16 * w for w in range(62)] + [1000 + 16 * w for w in range(43)]
  assert len(set(starts)) == len(starts)
  assert set(starts) <= set(expected)
  assert len(starts) == 4 * (105 // 4)
  # Pure in (seed, index): another reader gives the same bits, another seed not.
  again = tokens.TokenFiles(path, 16, 4, seed=0).train_batch(7)
  np.testing.assert_array_equal(again['inputs'], ds.train_batch(7)['inputs'])
  assert not np.array_equal(tokens.TokenFiles(path, 16, 4, seed=1)
                            .train_batch(7)['inputs'], again['inputs'])
  # Evaluation reads the eval shard's windows in order, from its start.
  ev = ds.eval_batch(0)['inputs']
  np.testing.assert_array_equal(ev[:, 0], 1700 + 16 * np.arange(4))


def test_process_slices_read_only_their_rows_and_make_up_the_batch(tmp_path):
  ds = data.TokenFiles(write_dir(tmp_path / 'd'), seq_len=8, batch_size=6,
                       seed=2)
  whole = ds.train_batch(5)['inputs']
  windows = ds.train_windows(5)
  parts, read = [], []
  for i in range(3):
    it = data.DataIterator(ds, 5, process_index=i, process_count=3)
    parts.append(next(it)['inputs'])
    read.append(ds.read_windows)
    assert it.state() == {'position': 6}
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  assert [len(r) for r in read] == [2, 2, 2]
  np.testing.assert_array_equal(np.concatenate(read), windows)


def _config(path, **data_fields):
  c = wsd.get_config('smoke')
  c.data.name, c.data.path = 'tokens', path
  for k, v in data_fields.items():
    c.data[k] = v
  return c


def test_bad_token_directories_fail_validation_naming_the_file(tmp_path):
  good = write_dir(tmp_path / 'good')
  config_lib.validate(_config(good))

  def error(config):
    with pytest.raises(config_lib.ConfigError) as info:
      config_lib.validate(config)
    message = str(info.value)
    assert message.startswith('config.data.path='), message
    return message

  assert 'needs the directory' in error(_config(None))
  assert 'is not a directory' in error(_config(str(tmp_path / 'missing')))
  os.makedirs(tmp_path / 'empty')
  assert 'meta.json is missing' in error(_config(str(tmp_path / 'empty')))
  # Shards written as uint32 but declared uint16: twice the bytes.
  wide = write_dir(tmp_path / 'wide', dtype='uint32')
  with open(os.path.join(wide, 'meta.json')) as f:
    meta = json.load(f)
  tokens.write_meta(wide, dict(meta, dtype='uint16'))
  assert 'train_00000.bin holds 4,000 bytes but meta.json says 1,000 uint16' \
      in error(_config(wide))
  # Ids beyond the declared vocabulary.
  small = write_dir(tmp_path / 'small', vocab=500)
  tokens.write_meta(small, dict(tokens.read_meta(small), vocab_size=100))
  assert 'train_00000.bin holds token id 499, outside the vocabulary of ' \
      'meta.json (100)' in error(_config(small))
  # A sequence longer than a shard (the eval shard holds 300 tokens).
  assert 'eval_00000.bin holds 300 tokens, fewer than data.seq_len + 1 = 301' \
      in error(_config(good, seq_len=300))
  # An embedding without a row for every id.
  c = _config(good)
  c.model.vocab_size = 400
  assert 'config.model.vocab_size=400 has no embedding row' in error(c)
  c.model.vocab_size = 4160  # Padding beyond the data's 4096 is fine.
  config_lib.validate(c)
  assert data.get_dataset(c).info.vocab_size == 4160
  # A split with no tokens at all.
  no_eval = write_dir(tmp_path / 'no_eval', eval_count=0)
  assert 'lists no eval tokens' in error(_config(no_eval))
