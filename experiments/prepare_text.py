r"""Tokenizes local text into the token shards ``data.name=tokens`` reads.

  python -m experiments.prepare_text --input='c4/en/c4-train.0000*-of-01024.json.gz' \
      --eval_input='c4/en/c4-validation.00000-of-00008.json.gz' \
      --output=data/c4_t5 --tokenizer=t5_tokenizer.json
  python -m experiments.prepare_text --input=/usr/lib/python3.11 \
      --output=data/stdlib_bytes --tokenizer=bytes

``--input`` is a file, a directory (its ``.txt .md .py .rst .json .jsonl``
files and their ``.gz``, recursively) or a glob, read in sorted order. A
``.json`` / ``.jsonl`` file (optionally gzipped) holds one document per line
in its ``text`` field (C4, FineWeb and OpenWebText dumps); any other file is
one document. Each document is followed by the EOS id. ``--tokenizer`` is

* ``bytes``: UTF-8 bytes (vocabulary 257, EOS 256; nothing to install);
* ``bpe:VOCAB``: a byte-level BPE of ``VOCAB`` tokens trained here, with
  Hugging Face ``tokenizers`` (``pip install -e ".[data]"``), on the first
  ``--bpe_train_bytes`` of the input; saved as ``OUTPUT/tokenizer.json``;
* ``FILE.json``: an existing ``tokenizer.json`` (e.g. a LLaMA, T5 or GPT-2
  one you have), copied to ``OUTPUT/tokenizer.json``; EOS is ``--eos`` or
  the first of ``</s> <|endoftext|> <|end_of_text|> <eos>`` it knows.

The held-out split is ``--eval_input`` (up to ``--eval_tokens`` tokens) or,
without it, the first whole documents of ``--input`` that reach
``--eval_tokens``. Shards end at document boundaries once they reach
``--shard_tokens``; a last remainder under half a shard joins the previous
shard. Nothing is downloaded. The format is described in
``dynamics/data/tokens.py``.

Resumable and idempotent: after each shard ``OUTPUT/progress.json`` records
the shards and where the input stands, so an interrupted run continues
where it stopped and writes the same bytes as an uninterrupted one;
``meta.json`` is written last. Re-running a finished preparation with the
same inputs and settings does nothing; with others it refuses to touch the
directory.

A file that cannot be parsed (a JSON line without a "text" field, a corrupt
gzip) stops the preparation with ``FILE:LINE`` and the reason; with
``--skip_bad_files`` every input file is read once first and the unparsable
ones are listed and left out (the recorded inputs are the rest).
"""

import hashlib
import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

from dynamics import cli
from dynamics import progress as progress_lib
from dynamics.data import tokens as tokens_lib
from experiments.text_inputs import input_files, usable_files
from experiments.text_inputs import pieces as _pieces

_INPUT = flags.DEFINE_string('input', None, 'Text file, directory or glob.')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for the shards.')
_TOKENIZER = flags.DEFINE_string(
    'tokenizer', 'bytes', 'bytes | bpe:VOCAB | path to a tokenizer.json.')
_EOS = flags.DEFINE_string('eos', None, 'EOS token of a tokenizer.json.')
_EVAL_INPUT = flags.DEFINE_string('eval_input', None,
                                  'Held-out text (default: the first '
                                  'documents of --input).')
_EVAL_TOKENS = flags.DEFINE_integer('eval_tokens', 1_000_000,
                                    'Tokens in the held-out shard.')
_SHARD_TOKENS = flags.DEFINE_integer('shard_tokens', 100_000_000,
                                     'Tokens per training shard.')
_BPE_BYTES = flags.DEFINE_integer('bpe_train_bytes', 100_000_000,
                                  'bpe:VOCAB trains on this much text.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
_SKIP_BAD = flags.DEFINE_bool(
    'skip_bad_files', False, 'Read every input file first and skip (and '
    'list) those that cannot be parsed; without it the first bad line stops '
    'the preparation, naming its file and line.')

EOS_CANDIDATES = ('</s>', '<|endoftext|>', '<|end_of_text|>', '<eos>')
PROGRESS_FILE, TOKENIZER_FILE = 'progress.json', 'tokenizer.json'
_BATCH = 512      # Pieces tokenized together.


def _stream(files: Sequence[str], start: Sequence[int]
            ) -> Iterator[Tuple[int, int, str, bool]]:
  """``(file index, piece index, text, ends_a_document)`` from ``start``."""
  for f in range(start[0], len(files)):
    for p, (text, end) in enumerate(_pieces(files[f])):
      if f > start[0] or p >= start[1]:
        yield f, p, text, end


class _Bytes:
  name, vocab_size, eos_id = 'bytes', 257, 256

  def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.frombuffer(t.encode('utf-8'), np.uint8) for t in texts]


class _HuggingFace:

  def __init__(self, tokenizer: Any, eos: Optional[str], where: str):
    self.tokenizer, self.name = tokenizer, where
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    names = (eos,) if eos else EOS_CANDIDATES
    ids = [tokenizer.token_to_id(n) for n in names]
    found = [i for i in ids if i is not None]
    if not found:
      raise cli.UserError(f'{where}: no EOS token among {names}; name it '
                          'with --eos=TOKEN')
    self.eos_id = found[0]

  def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.asarray(e.ids, np.int64) for e in
            self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def _tokenizers_module():
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise cli.UserError('--tokenizer=bpe:VOCAB or FILE.json needs Hugging '
                        'Face tokenizers: pip install -e ".[data]" (or use '
                        '--tokenizer=bytes)') from None
  return tokenizers


def make_tokenizer(spec: Dict[str, Any], output: str, files: Sequence[str],
                   eos: Optional[str], progress: bool):
  """The tokenizer of ``spec``; trains (or reloads) ``bpe:VOCAB``."""
  kind = spec['tokenizer']
  if kind == 'bytes':
    return _Bytes()
  tk = _tokenizers_module()
  saved = os.path.join(output, TOKENIZER_FILE)
  if kind.startswith('bpe:') and not os.path.isfile(saved):
    model = tk.Tokenizer(tk.models.BPE())
    model.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=int(kind[4:]), special_tokens=['<|endoftext|>'],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress)

    def sample():
      total = 0
      for _, _, text, _ in _stream(files, (0, 0)):
        yield text
        total += len(text)
        if total >= spec['bpe_train_bytes']:
          return

    model.train_from_iterator(sample(), trainer)
    model.save(saved + '.tmp')
    os.replace(saved + '.tmp', saved)
  elif not kind.startswith('bpe:') and not os.path.isfile(saved):
    shutil.copyfile(kind, saved)
  return _HuggingFace(tk.Tokenizer.from_file(saved), eos, kind)


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def make_spec(files: Sequence[str], eval_files: Sequence[str], tokenizer: str,
              eos: Optional[str], eval_tokens: int, shard_tokens: int,
              bpe_train_bytes: int) -> Dict[str, Any]:
  """What the output is a function of: inputs (paths and sizes), settings."""
  spec = {'inputs': [[f, os.path.getsize(f)] for f in files],
          'eval_inputs': [[f, os.path.getsize(f)] for f in eval_files],
          'tokenizer': tokenizer, 'eos': eos, 'eval_tokens': eval_tokens,
          'shard_tokens': shard_tokens}
  if tokenizer.startswith('bpe:'):
    spec['bpe_train_bytes'] = bpe_train_bytes
  elif tokenizer != 'bytes':
    if not os.path.isfile(tokenizer):
      raise cli.UserError(f'--tokenizer={tokenizer}: use bytes, bpe:VOCAB or '
                          'the path of a tokenizer.json')
    spec['tokenizer_sha256'] = _sha256(tokenizer)
  return spec


def _differences(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _tokenize(files, start, tok, writer: tokens_lib.ShardWriter, split: str, target: int,
              bar) -> bool:
  """Streams ``files`` from ``start`` into ``split`` shards of ``target``
  tokens; for 'eval', stops after the first. Returns whether it stopped."""
  batch = []

  def flush() -> bool:
    encoded = tok.encode_batch([text for _, _, text, _ in batch])
    for (f, p, text, end), ids in zip(batch, encoded):
      writer.add(ids)
      if end:
        writer.add(np.array([tok.eos_id]))
      bar.update(len(text))
      if end and writer.count >= target:
        writer.cut(split, (f, p + 1))
        if split == 'eval':
          return True
    batch.clear()
    return False

  for item in _stream(files, start):
    batch.append(item)
    if len(batch) >= _BATCH and flush():
      return True
  return flush()


def prepare(files: Sequence[str], output: str, tokenizer: str = 'bytes', *,
            eval_files: Sequence[str] = (), eval_tokens: int = 1_000_000,
            shard_tokens: int = 100_000_000, eos: Optional[str] = None,
            bpe_train_bytes: int = 100_000_000, progress: bool = True,
            on_shard: Optional[Callable[[Dict[str, Any]], None]] = None
            ) -> Dict[str, Any]:
  """Writes (or resumes, or confirms) the token directory ``output``.

  Returns:
    Its ``meta.json`` (`dynamics.data.tokens.read_meta`).

  Raises:
    cli.UserError: bad input, or ``output`` holds another preparation.
  """
  spec = make_spec(files, eval_files, tokenizer, eos, eval_tokens,
                   shard_tokens, bpe_train_bytes)
  os.makedirs(output, exist_ok=True)
  state = _previous(output, spec)
  if state is not None and 'position' not in state:  # meta.json: finished.
    print(f'{output}: already prepared ({_summary(state)})')
    return state
  if state is None:
    if os.listdir(output):
      raise cli.UserError(f'--output={output} is not empty and holds no '
                          'token preparation; use a new or empty directory')
    state = {'format': tokens_lib.FORMAT, 'version': 1, 'spec': spec,
             'shards': [], 'position': {'eval': [0, 0], 'train': [0, 0]}}
    tokens_lib.write_meta(output, state, PROGRESS_FILE)  # Before training BPE.
  tok = make_tokenizer(spec, output, files, eos, progress)
  state.update(dtype=tokens_lib.dtype_for(tok.vocab_size),
               vocab_size=tok.vocab_size, eos_id=tok.eos_id,
               tokenizer=tok.name)
  tokens_lib.discard_unrecorded(output, state)
  writer = tokens_lib.ShardWriter(output, state, PROGRESS_FILE, on_shard)
  plain = not any(f.endswith('.gz') for f in list(files) + list(eval_files))
  total = sum(os.path.getsize(f) for f in files) if plain else None
  with progress_lib.bar(total, f'tokenizing into {output}', enabled=progress,
                        unit='char', unit_scale=True, dynamic_ncols=True,
                        mininterval=1.0) as bar:
    _tokenize_all(files, eval_files, tok, writer, state, eval_tokens,
                  shard_tokens, bar)
  meta = dict(state)
  del meta['position']
  tokens_lib.write_meta(output, meta)
  os.remove(os.path.join(output, PROGRESS_FILE))
  print(f'{output}: {_summary(meta)}')
  return meta


def _previous(output: str, spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """The finished (meta.json) or partial (progress.json) preparation in
  ``output`` made with ``spec``; None if there is none."""
  for name in (tokens_lib.META_FILE, PROGRESS_FILE):
    path = os.path.join(output, name)
    if os.path.isfile(path):
      with open(path) as f:
        previous = json.load(f)
      changed = _differences(previous.get('spec', {}), spec)
      if changed:
        raise cli.UserError(f'{output} holds shards prepared from other '
                            f'inputs or settings ({", ".join(changed)} '
                            'differ); use another --output')
      return previous
  return None


def _tokenize_all(files, eval_files, tok, writer: tokens_lib.ShardWriter,
                  state: Dict[str, Any], eval_tokens: int, shard_tokens: int,
                  bar) -> None:
  """The held-out shard, then the training shards (resuming either)."""
  shards = state['shards']
  if not any(s['split'] == 'eval' for s in shards):
    stopped = _tokenize(eval_files or files, state['position']['eval'], tok,
                        writer, 'eval', eval_tokens, bar)
    if not stopped and eval_files and writer.count:
      writer.cut('eval', (len(eval_files), 0))
    elif not stopped:
      raise cli.UserError(f'the input holds {writer.count:,} tokens, not '
                          f'enough for --eval_tokens={eval_tokens:,} plus '
                          'training data')
  trained = any(s['split'] == 'train' for s in shards)
  # Without --eval_input, training starts after the held-out documents.
  start = (state['position']['train'] if trained or eval_files
           else state['position']['eval'])
  _tokenize(files, start, tok, writer, 'train', shard_tokens, bar)
  trained = any(s['split'] == 'train' for s in shards)
  if writer.count:
    writer.cut('train', (len(files), 0),
               append=trained and writer.count < shard_tokens // 2)
  elif not trained:
    raise cli.UserError('--input holds no text after the held-out documents; '
                        'lower --eval_tokens')


def _summary(meta: Dict[str, Any]) -> str:
  train, held_out = tokens_lib.token_counts(meta)
  shards = sum(s['split'] == 'train' for s in meta['shards'])
  return (f'{train:,} training tokens in {shards} shard(s), {held_out:,} '
          f'held out; vocabulary {meta["vocab_size"]:,} ({meta["tokenizer"]}), '
          f'EOS {meta["eos_id"]}, {meta["dtype"]}')


def main(argv):
  del argv
  tokenizer = _TOKENIZER.value
  if tokenizer.startswith('bpe:') and not (tokenizer[4:].isdigit()
                                           and int(tokenizer[4:]) > 257):
    raise cli.UserError(f'--tokenizer={tokenizer}: bpe:VOCAB needs an '
                        'integer VOCAB > 257 (the 256 bytes and EOS)')
  for flag in (_EVAL_TOKENS, _SHARD_TOKENS, _BPE_BYTES):
    if flag.value <= 0:
      raise cli.UserError(f'--{flag.name}={flag.value}: must be > 0')
  eval_files = (input_files(_EVAL_INPUT.value, '--eval_input')
                if _EVAL_INPUT.value else [])
  files = input_files(_INPUT.value)
  if _SKIP_BAD.value:
    files = usable_files(files, '--input')
    eval_files = usable_files(eval_files, '--eval_input') if eval_files else []
  try:
    prepare(files, _OUTPUT.value, tokenizer,
            eval_files=eval_files, eval_tokens=_EVAL_TOKENS.value,
            shard_tokens=_SHARD_TOKENS.value, eos=_EOS.value,
            bpe_train_bytes=_BPE_BYTES.value, progress=_PROGRESS.value)
  except KeyboardInterrupt:
    print(f'\nInterrupted; {_OUTPUT.value}/{PROGRESS_FILE} records the shards '
          'written so far: re-run the same command to resume.')
    sys.exit(cli.EXIT_INTERRUPTED)


if __name__ == '__main__':
  cli.run(main, required=['input', 'output'])
