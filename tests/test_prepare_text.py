"""experiments.prepare_text: exact shards from text, resume, idempotence, BPE."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dynamics import cli
from dynamics.data import tokens
from experiments import prepare_text
from experiments import text_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [f'document {i}: ' + 'lorem ipsum ' * (5 + i) for i in range(12)]


@pytest.fixture
def text(tmp_path):
  """Plain text, JSON lines and gzipped JSON lines; sorted: a, b, c."""
  src = tmp_path / 'src'
  os.makedirs(src)
  (src / 'a.txt').write_text(DOCS[0] + '\nsecond line\n')
  (src / 'b.jsonl').write_text(
      '\n'.join(json.dumps({'text': d, 'id': i}) for i, d in
                enumerate(DOCS[1:6], 1)) + '\n\n')
  with gzip.open(src / 'c.json.gz', 'wt') as f:
    f.write('\n'.join(json.dumps({'text': d}) for d in DOCS[6:]))
  (src / 'ignored.bin').write_bytes(b'\x00' * 100)
  return str(src)


def _read(path, shard):
  meta = tokens.read_meta(path)
  return np.fromfile(os.path.join(path, shard['file']), meta['dtype'])


def _docs_bytes(docs):
  return [np.frombuffer(d.encode(), np.uint8).astype(np.int64).tolist() + [256]
          for d in docs]


def test_bytes_shards_hold_the_documents_then_eos(text, tmp_path):
  out = str(tmp_path / 'out')
  files = prepare_text.input_files(text)
  assert [os.path.basename(f) for f in files] == ['a.txt', 'b.jsonl',
                                                  'c.json.gz']
  meta = prepare_text.prepare(files, out, 'bytes', eval_tokens=60,
                              shard_tokens=150, progress=False)
  docs = [DOCS[0] + '\nsecond line\n'] + DOCS[1:]
  expected = _docs_bytes(docs)
  assert (meta['vocab_size'], meta['eos_id'], meta['dtype']) == (257, 256,
                                                                 'uint16')
  shards = meta['shards']
  # Held out: whole documents until 60 tokens (the first file: 86).
  assert [s['split'] for s in shards][0] == 'eval'
  np.testing.assert_array_equal(_read(out, shards[0]), expected[0])
  # Training: the other documents in order, shards ending at documents once
  # they reach 150 tokens; the short remainder joined the last shard.
  train = [s for s in shards if s['split'] == 'train']
  np.testing.assert_array_equal(
      np.concatenate([_read(out, s) for s in train]), sum(expected[1:], []))
  sizes = [s['tokens'] for s in train]
  assert all(n >= 150 for n in sizes) and len(sizes) >= 2, sizes
  assert all(s['max_id'] == 256 for s in shards)
  assert not os.path.exists(os.path.join(out, prepare_text.PROGRESS_FILE))


def test_interrupted_preparation_resumes_to_the_same_bytes(text, tmp_path):
  files = prepare_text.input_files(text)
  kwargs = dict(eval_tokens=60, shard_tokens=150, progress=False)
  whole = prepare_text.prepare(files, str(tmp_path / 'whole'), **kwargs)

  def stop(state):
    if sum(s['split'] == 'train' for s in state['shards']) == 1:
      raise KeyboardInterrupt

  cut = str(tmp_path / 'cut')
  with pytest.raises(KeyboardInterrupt):
    prepare_text.prepare(files, cut, on_shard=stop, **kwargs)
  assert not os.path.exists(os.path.join(cut, tokens.META_FILE))
  # Debris of the interrupted next shard is discarded on resume.
  (tmp_path / 'cut' / 'train_00001.bin.tmp').write_bytes(b'junk')
  resumed = prepare_text.prepare(files, cut, **kwargs)
  assert resumed == whole
  for shard in whole['shards']:
    with open(os.path.join(tmp_path, 'whole', shard['file']), 'rb') as a, \
        open(os.path.join(cut, shard['file']), 'rb') as b:
      assert a.read() == b.read(), shard['file']
  assert sorted(os.listdir(cut)) == sorted(os.listdir(tmp_path / 'whole'))
  # Idempotent: the same request does nothing; another is refused.
  assert prepare_text.prepare(files, cut, **kwargs) == whole
  with pytest.raises(cli.UserError, match='shard_tokens differ'):
    prepare_text.prepare(files, cut, eval_tokens=60, shard_tokens=99,
                         progress=False)


def test_bad_input_says_what_is_wrong(text, tmp_path):
  with pytest.raises(cli.UserError, match='no such file'):
    prepare_text.input_files(str(tmp_path / 'nothing*.txt'))
  files = prepare_text.input_files(text)
  with pytest.raises(cli.UserError, match='not enough for --eval_tokens'):
    prepare_text.prepare(files, str(tmp_path / 'o1'), eval_tokens=10**6,
                         progress=False)
  (tmp_path / 'o2').mkdir()
  (tmp_path / 'o2' / 'precious.txt').write_text('mine')
  with pytest.raises(cli.UserError, match='is not empty'):
    prepare_text.prepare(files, str(tmp_path / 'o2'), progress=False)
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"title": "no text field"}\n')
  with pytest.raises(cli.UserError, match='bad.jsonl:1: not a JSON object'):
    prepare_text.prepare([str(bad)], str(tmp_path / 'o3'), progress=False)


def test_command_writes_a_directory_the_reader_accepts(text, tmp_path):
  out = str(tmp_path / 'cmd')
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare_text', f'--input={text}',
       f'--output={out}', '--eval_tokens=60', '--shard_tokens=150'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  docs = _docs_bytes([DOCS[0] + '\nsecond line\n'] + DOCS[1:])
  train_tokens = sum(len(d) for d in docs[1:])
  assert done.stdout.strip().endswith(
      f'{train_tokens:,} training tokens in 8 shard(s), 86 held out; '
      'vocabulary 257 (bytes), EOS 256, uint16'), done.stdout
  assert 'tokenizing into' in done.stderr  # The progress bar.
  ds = tokens.TokenFiles(out, seq_len=16, batch_size=4, seed=0)
  assert ds.train_batch(0)['inputs'].shape == (4, 16)


@pytest.mark.skipif(importlib.util.find_spec('tokenizers') is None,
                    reason='Hugging Face tokenizers ([data] extra) missing')
def test_bpe_is_trained_locally_and_reused_from_its_file(text, tmp_path):
  import tokenizers
  files = prepare_text.input_files(text)
  out = str(tmp_path / 'bpe')
  meta = prepare_text.prepare(files, out, 'bpe:300', eval_tokens=20,
                              shard_tokens=50, progress=False)
  saved = os.path.join(out, prepare_text.TOKENIZER_FILE)
  tok = tokenizers.Tokenizer.from_file(saved)
  assert meta['vocab_size'] == tok.get_vocab_size() <= 300
  assert meta['eos_id'] == tok.token_to_id('<|endoftext|>')
  # Merges were learned: fewer tokens than bytes, and the text comes back.
  ids = np.concatenate([_read(out, s) for s in meta['shards']])
  pieces = np.split(ids, np.flatnonzero(ids == meta['eos_id']) + 1)[:-1]
  decoded = [tok.decode(p[:-1].tolist()) for p in pieces]
  assert decoded == [DOCS[0] + '\nsecond line\n'] + DOCS[1:]
  assert len(ids) < 0.6 * sum(len(d) for d in decoded)
  # An existing tokenizer.json gives the same shards.
  again = prepare_text.prepare(files, str(tmp_path / 'file'), saved,
                               eval_tokens=20, shard_tokens=50,
                               progress=False)
  assert again['shards'] == meta['shards'] and again['eos_id'] == meta['eos_id']


def test_bad_files_fail_naming_file_and_line_unless_skipped(text, tmp_path):
  src = tmp_path / 'src'
  (src / 'd.jsonl').write_text('{"text": "fine"}\n{"title": "no text"}\n')
  (src / 'e.json.gz').write_bytes(gzip.compress(b'{"text": "x"}\n' * 50)[:40])
  files = prepare_text.input_files(str(src))
  with pytest.raises(cli.UserError, match='d.jsonl:2: not a JSON object'):
    prepare_text.prepare(files, str(tmp_path / 'o1'), eval_tokens=60,
                         progress=False)
  bad = text_inputs.bad_files(files)
  assert [os.path.basename(f) for f, _ in bad] == ['d.jsonl', 'e.json.gz']
  assert 'e.json.gz:' in bad[1][1] and 'cannot be read' in bad[1][1]
  out = str(tmp_path / 'cmd')
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare_text', f'--input={src}',
       f'--output={out}', '--eval_tokens=60', '--shard_tokens=150',
       '--skip_bad_files', '--noprogress'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert 'skipping 2 file(s) that cannot be parsed' in done.stdout
  assert 'd.jsonl:2: not a JSON object' in done.stdout
  inputs = [os.path.basename(f) for f, _ in tokens.read_meta(out)['spec']['inputs']]
  assert inputs == ['a.txt', 'b.jsonl', 'c.json.gz']
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.prepare_text', f'--input={src}',
       f'--output={tmp_path / "cmd2"}', '--eval_tokens=60', '--noprogress'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and 'd.jsonl:2: not a JSON object' in (
      done.stdout + done.stderr), done.stderr
