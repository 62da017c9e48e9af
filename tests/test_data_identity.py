"""Issue 28 item 3: token data is identified by its manifest, not its path.

A run on token files records their manifest in ``config.json`` (shard
names, splits, token counts, sizes, a cheap hash per shard:
`dynamics.data.manifest`). A moved copy of the same data resumes, the new
path recorded in ``resumes.jsonl``; other data -- even at the same path --
is refused naming the shard, and so is a branch from a run on other data.
One tiny run (module fixture) is copied into each test.
"""

import json
import os
import shutil

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import config_lib, runs, train  # noqa: E402
from dynamics import workdir as workdir_lib  # noqa: E402
from dynamics.data import manifest, tokens  # noqa: E402

VOCAB = 64


def write_tokens(path, seed=0, train_count=600, eval_count=200):
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed)
  shards = []
  for split, n in (('train', train_count), ('eval', eval_count)):
    ids = rng.integers(0, VOCAB, n).astype('uint16')
    name = tokens.shard_name(split, 0)
    ids.tofile(os.path.join(path, name))
    shards.append({'file': name, 'split': split, 'tokens': n,
                   'max_id': int(ids.max())})
  tokens.write_meta(path, {'format': tokens.FORMAT, 'version': 1,
                           'dtype': 'uint16', 'vocab_size': VOCAB,
                           'eos_id': VOCAB - 1, 'tokenizer': 'test',
                           'shards': shards})
  return str(path)


def tiny_config(data_path, **changes):
  c = wsd.get_config('smoke')
  c.data.name, c.data.path, c.data.seq_len = 'tokens', data_path, 16
  c.num_steps, c.eval_every, c.eval_batches, c.log_every = 4, 4, 1, 2
  c.schedule.warmup_steps = 1
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  c.model.num_layers, c.model.d_model, c.progress = 1, 16, False
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp('identity')
  data = write_tokens(str(root / 'data'))
  train.train_and_evaluate(tiny_config(data), str(root / 'run'))
  return str(root / 'run'), data


@pytest.fixture
def copied(trained, tmp_path):
  run, data = trained
  shutil.copytree(run, tmp_path / 'run')
  shutil.copytree(data, tmp_path / 'data')
  return str(tmp_path / 'run'), str(tmp_path / 'data')


def _point_record_at(run, data):
  """The run's config.json records ``data`` as its data.path."""
  path = os.path.join(run, 'config.json')
  with open(path) as f:
    record = json.load(f)
  record['data']['path'] = data
  with open(path, 'w') as f:
    json.dump(record, f)


def test_the_run_records_the_manifest_and_an_absolute_path(trained):
  run, data = trained
  record = runs.Run.open(run).record
  assert record['data']['path'] == os.path.realpath(data)
  assert record['data_manifest'] == manifest.manifest(data)
  assert [s['file'] for s in record['data_manifest']['shards']] == [
      'train_00000.bin', 'eval_00000.bin']


def test_a_moved_copy_of_the_same_data_resumes_and_is_recorded(
    copied, tmp_path, monkeypatch):
  """Was: refused with advice that did not apply (a path string compare);
  a relative path for the recorded absolute one too."""
  run, data = copied
  monkeypatch.chdir(tmp_path)
  train.train_and_evaluate(tiny_config('data'), run)  # Relative, moved.
  opened = runs.Run.open(run)
  (entry,) = opened.resumes()
  assert entry['changed']['data.path']['to'] == os.path.realpath(data)
  assert opened.config.data.path == os.path.realpath(data)
  assert 'data_manifest' in opened.record  # Kept when re-recorded.


def test_other_data_at_the_same_path_is_refused_naming_the_shard(copied):
  """Was: resumed silently on the re-prepared data."""
  run, data = copied
  _point_record_at(run, data)
  shard = os.path.join(data, 'train_00000.bin')
  ids = np.fromfile(shard, 'uint16')
  ids[::-1].tofile(shard)  # Same size, same tokens, other order.
  with pytest.raises(workdir_lib.ResumeMismatchError) as err:
    train.train_and_evaluate(tiny_config(data), run)
  assert 'shard train_00000.bin differs (hash:' in str(err.value)
  assert '\n' not in str(err.value)


def test_a_branch_from_a_run_on_other_data_is_refused(trained, tmp_path):
  run, _ = trained
  other = write_tokens(str(tmp_path / 'other'), seed=1, train_count=700)
  config = tiny_config(other, **{'branch.from_workdir': run,
                                 'branch.from_step': 2,
                                 'branch.decay_steps': 2})
  with pytest.raises(config_lib.ConfigError) as err:
    train.train_and_evaluate(config, str(tmp_path / 'branch'))
  assert str(err.value).startswith(f'config.branch.from_workdir={run}: ')
  assert 'shard train_00000.bin differs (tokens: 600 -> 700)' in str(err.value)


def test_a_token_outside_the_vocabulary_past_the_sample_names_the_file(
    tmp_path):
  """Was: the check samples the first 65,536 tokens of a shard; an id past
  them surfaced as a NaN at step 24 naming grad_norm, not the file."""
  path = write_tokens(str(tmp_path / 'data'), eval_count=70_000)
  shard = os.path.join(path, 'eval_00000.bin')
  ids = np.fromfile(shard, 'uint16')
  ids[66_000] = VOCAB + 5  # Past the sample; meta.json's max_id says less.
  ids.tofile(shard)
  dataset = tokens.TokenFiles(path, seq_len=16, batch_size=8, seed=0)
  batch = 66_000 // 16 // 8
  dataset.eval_batch(batch - 1)  # Clean batches read as before.
  with pytest.raises(tokens.TokenDataError) as err:
    dataset.eval_batch(batch)
  assert str(err.value) == (f'{shard} holds token id {VOCAB + 5} at token '
                            f'66,000, outside the vocabulary of meta.json '
                            f'({VOCAB})')
