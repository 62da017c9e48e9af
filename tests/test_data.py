"""Datasets are deterministic, resumable, and what they claim to be."""

import importlib.util
import sys
import types

import numpy as np
import pytest

from configs import wsd
from dynamics import data


def _config(name, **data_fields):
  c = wsd.get_config('smoke')
  c.data.name = name
  for k, v in data_fields.items():
    c.data[k] = v
  return c


@pytest.mark.parametrize('name', ['markov', 'teacher_student', 'modular', 'digits'])
def test_batches_are_a_function_of_seed_and_index(name):
  a = data.get_dataset(_config(name))
  b = data.get_dataset(_config(name))
  for i in (0, 7):
    for k in ('inputs', 'targets'):
      np.testing.assert_array_equal(a.train_batch(i)[k], b.train_batch(i)[k])
  assert not np.array_equal(a.train_batch(0)['inputs'], a.train_batch(1)['inputs'])
  assert not np.array_equal(a.train_batch(0)['inputs'], a.eval_batch(0)['inputs'])


def test_iterator_resumes_from_its_position():
  ds = data.get_dataset(_config('markov'))
  it = data.DataIterator(ds)
  for _ in range(5):
    next(it)
  saved = it.state()
  expected = [next(it)['inputs'] for _ in range(3)]
  resumed = data.DataIterator(ds)
  resumed.restore(saved)
  assert saved == {'position': 5}
  for e in expected:
    np.testing.assert_array_equal(next(resumed)['inputs'], e)


def test_process_slices_make_up_the_global_batch():
  ds = data.get_dataset(_config('markov', batch_size=8))
  parts = [next(data.DataIterator(ds, 3, process_index=i, process_count=2))
           for i in range(2)]
  np.testing.assert_array_equal(
      np.concatenate([p['inputs'] for p in parts]), ds.train_batch(3)['inputs'])


def test_markov_language_statistics_match_its_transition_matrix():
  ds = data.MarkovLanguage(vocab_size=4, seq_len=256, batch_size=64,
                           temperature=1.0, seed=0)
  np.testing.assert_allclose(ds.transition.sum(1), 1.0, rtol=1e-12)
  counts = np.zeros((4, 4))
  for i in range(4):
    b = ds.train_batch(i)
    np.add.at(counts, (b['inputs'].ravel(), b['targets'].ravel()), 1)
  empirical = counts / counts.sum(1, keepdims=True)
  np.testing.assert_allclose(empirical, ds.transition, atol=0.02)
  # Entropy rate: the mean negative log-likelihood of the true chain.
  nll = -np.log(ds.transition[b['inputs'], b['targets']]).mean()
  assert abs(nll - ds.info.loss_floor) < 0.05
  colder = data.MarkovLanguage(4, 16, 8, temperature=0.3, seed=0)
  assert colder.info.loss_floor < ds.info.loss_floor


def test_targets_are_next_tokens():
  b = data.get_dataset(_config('markov')).train_batch(0)
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])


def test_byte_text_reads_a_local_directory(tmp_path):
  (tmp_path / 'a.txt').write_bytes(b'hello world ' * 200)
  (tmp_path / 'b.py').write_bytes(b'print(1)\n' * 200)
  (tmp_path / 'c.bin').write_bytes(b'\x00' * 5000)  # Not text: ignored.
  ds = data.ByteText.from_directory(str(tmp_path), seq_len=16, batch_size=4,
                                   max_bytes=10**6, seed=0)
  assert len(ds.train_data) + len(ds.eval_data) == 2400 + 1800
  batch = ds.train_batch(0)
  assert batch['inputs'].shape == (4, 16) and batch['inputs'].max() < 256
  with pytest.raises(FileNotFoundError, match='text_dir'):
    data.ByteText.from_directory(str(tmp_path / 'missing'), 16, 4, 100, 0)


def test_byte_text_defaults_to_the_standard_library():
  ds = data.ByteText.from_directory(None, seq_len=32, batch_size=2,
                                   max_bytes=200_000, seed=0)
  assert len(ds.train_data) + len(ds.eval_data) == 200_000


def test_modular_labels():
  ds = data.modular_arithmetic(7, 'add', 0.5, batch_size=1000, seed=0)
  x, y = ds.full_batch()['inputs'], ds.full_batch()['targets']
  a, b = x[:, :7].argmax(1), x[:, 7:].argmax(1)
  np.testing.assert_array_equal(y, (a + b) % 7)
  assert len(y) + len(ds.eval['targets']) == 49
  div = data.modular_arithmetic(7, 'div', 0.5, 1000, 0)
  x, y = div.full_batch()['inputs'], div.full_batch()['targets']
  np.testing.assert_array_equal((y * x[:, 7:].argmax(1)) % 7, x[:, :7].argmax(1))


def test_finite_datasets_cycle_epochs_and_support_full_batch():
  ds = data.get_dataset(_config('teacher_student', num_train=64, batch_size=16))
  epoch = np.concatenate([ds.train_batch(i)['inputs'] for i in range(4)])
  np.testing.assert_array_equal(np.sort(epoch, axis=0),
                                np.sort(ds.train['inputs'], axis=0))
  full = data.get_dataset(_config('teacher_student', num_train=64, batch_size=64))
  np.testing.assert_array_equal(full.train_batch(5)['inputs'], full.train['inputs'])


def test_digits_and_white_noise_control():
  ds = data.get_dataset(_config('digits'))
  assert ds.info.input_shape == (8, 8, 1) and ds.info.num_train == 1437
  noise = data.get_dataset(_config('digits', white_noise=True))
  np.testing.assert_array_equal(noise.train['targets'], ds.train['targets'])
  assert not np.allclose(noise.train['inputs'], ds.train['inputs'])
  split = data.get_dataset(_config('digits', num_eval=197))
  assert split.num_train == 1600 and len(split.eval['targets']) == 197
  # The held-out images are disjoint from the training ones.
  train_rows = {r.tobytes() for r in split.train['inputs'].reshape(1600, -1)}
  assert not any(r.tobytes() in train_rows for r in split.eval['inputs'].reshape(197, -1)
                 if np.any(r))
  with pytest.raises(ValueError, match='num_eval'):
    data.get_dataset(_config('digits', num_eval=1797))


@pytest.mark.skipif(importlib.util.find_spec('datasets') is not None,
                    reason='the optional [data] extra is installed')
def test_optional_loaders_say_what_to_install():
  with pytest.raises(ImportError, match=r'pip install -e "\.\[data\]"'):
    data.get_dataset(_config('huggingface'))


def test_huggingface_loader_reads_text_fields(monkeypatch):
  """The optional loader, on a stand-in for the ``datasets`` package."""
  fake = types.ModuleType('datasets')
  calls = []

  def load_dataset(name, split):
    calls.append((name, split))
    return [{'label': 0, 'text': 'hello world ' * 100}, {'text': 'more text ' * 100}]

  fake.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, 'datasets', fake)
  c = _config('huggingface', hf_name='tiny_shakespeare', max_bytes=1500)
  ds = data.get_dataset(c)
  assert calls == [('tiny_shakespeare', 'train')]
  text = bytes(np.concatenate([ds.train_data, ds.eval_data]))
  assert text.startswith(b'hello world') and b'more text' in text
  assert len(text) == 1500 + 1  # max_bytes, plus the newline between examples
  assert ds.train_batch(0)['inputs'].shape == (c.data.batch_size, c.data.seq_len)
