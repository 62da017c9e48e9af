"""Embedded datasets and deterministic, resumable batch iterators.

Every dataset is a pure function of ``(seed, index)``: ``train_batch(i)`` is the
i-th training batch, always the same, so a run's data position is one integer
(checkpointed with the model) and any step can be replayed. Batches are dicts of
NumPy arrays ``{'inputs': ..., 'targets': ...}``; the training loop places them
on devices.

Datasets that need no download:
  * ``markov``: a synthetic Markov (bigram) language with tunable entropy.
  * ``bytes``: byte-level text from a local directory (default: the Python
    standard library's own source files).
  * ``tokens``: pre-tokenized text in memory-mapped shards (``data.path``,
    written by ``python -m experiments.prepare_text``; see `tokens`).
  * ``teacher_student``: regression on the outputs of a random teacher MLP.
  * ``modular``: ``(a op b) mod p`` for grokking studies.
  * ``digits``: scikit-learn's bundled 8x8 digits (needs scikit-learn).
Optional loaders (``tfds``, ``huggingface``) need the ``[data]`` extra.
"""

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Dict, Optional

from dynamics import errors
from dynamics.data import documents
from dynamics.data import tokens
from dynamics.data.arrays import ArrayDataset, digits
from dynamics.data.base import Dataset, DatasetInfo
from dynamics.data.synthetic import (MODULAR_OPS, MarkovLanguage,
                                     modular_arithmetic, pow_mod_inverse,
                                     teacher_student)
from dynamics.data.text import (ByteText, default_text_dir, huggingface_text,
                                min_text_bytes, text_bytes, tfds_text)
from dynamics.data.tokens import TokenDataError, TokenFiles
from dynamics.types import Batch

__all__ = ['ArrayDataset', 'ByteText', 'DATASETS', 'DataIterator', 'Dataset',
           'DatasetInfo', 'Entry', 'LANGUAGE_DATASETS', 'MODULAR_OPS',
           'MarkovLanguage', 'check', 'default_text_dir', 'digits',
           'get_dataset', 'huggingface_text', 'modular_arithmetic',
           'pow_mod_inverse', 'teacher_student', 'tfds_text', 'TokenDataError',
           'TokenFiles']


@dataclasses.dataclass(frozen=True)
class Entry:
  """One dataset of the registry.

  Attributes:
    build: ``config -> Dataset`` (reads ``config.data`` and ``config.seed``).
    kind: 'language' (token sequences), 'vector' or 'image': what a model
      takes (``dynamics.models.MODELS[name].data``).
    package: the optional package it needs (None: nothing to install).
    vocab: ``config.data -> vocabulary size`` of language data known before
      it loads (None: not known, or not language).
    check: ``config -> None``, raising ``ConfigError`` for a field only this
      dataset reads (None: it has none).
  """
  build: Callable[[Any], Dataset]
  kind: str
  package: Optional[str] = None
  vocab: Callable[[Any], Optional[int]] = lambda d: None
  check: Optional[Callable[[Any], None]] = None


def _markov(c):
  d = c.data
  return MarkovLanguage(d.vocab_size, d.seq_len, d.batch_size, d.temperature,
                        c.seed)


def _check_markov(c):
  errors.number('data.temperature', c.data.temperature, above=0)
  errors.integer('data.vocab_size', c.data.vocab_size, 2)


def _check_text(c):
  """Enough local text for ``ByteText`` (before reading any of it)."""
  d = c.data
  need = min_text_bytes(d.seq_len)
  if d.text_dir is not None:
    errors.require(os.path.isdir(d.text_dir), 'data.text_dir', d.text_dir,
                   'is not a directory')
  errors.require(d.max_bytes >= need, 'data.max_bytes', d.max_bytes,
                 f'reads too little text for data.seq_len={d.seq_len} (at '
                 f'least {need} bytes)')
  have = text_bytes(d.text_dir, need)
  errors.require(have >= need, 'data.text_dir', d.text_dir, f'holds {have} '
                 'bytes of .py, .txt and .md text, too few for data.seq_len='
                 f'{d.seq_len} (at least {need})')


def _check_tokens(c):
  """The token files against ``config.model.vocab_size`` (the embedding's
  rows): `tokens.check`."""
  d = c.data
  try:
    tokens.check(d.path, d.seq_len, c.model.vocab_size)
  except TokenDataError as e:
    raise errors.ConfigError(f'config.data.path={d.path!r}: {e}') from None


def _teacher_student(c):
  d = c.data
  return teacher_student(d.input_dim, d.teacher_width, d.output_dim,
                         d.num_train, d.noise_std, d.batch_size, c.seed)


def _check_modular(c):
  d = c.data
  errors.integer('data.modulus', d.modulus, 2)
  errors.number('data.train_fraction', d.train_fraction, above=0, below=1)
  errors.one_of('data.operation', d.operation, MODULAR_OPS)


def _check_digits(c):
  n = c.data.num_eval
  errors.require(n is None or (errors.is_int(n) and 0 < n < 1797),
                 'data.num_eval', n,
                 'must be in (0, 1797): the digits set has 1,797 images')


def _check_hf_name(c):
  errors.require(bool(c.data.hf_name), 'data.hf_name', c.data.hf_name,
                 f'must name the dataset for data.name={c.data.name}')


DATASETS: Dict[str, Entry] = {
    'markov': Entry(_markov, 'language', vocab=lambda d: d.vocab_size,
                    check=_check_markov),
    'bytes': Entry(lambda c: ByteText.from_directory(
        c.data.text_dir, c.data.seq_len, c.data.batch_size,
        c.data.max_bytes, c.seed), 'language', vocab=lambda d: 256,
                   check=_check_text),
    'tokens': Entry(lambda c: TokenFiles(
        c.data.path, c.data.seq_len, c.data.batch_size, c.seed,
        c.model.vocab_size, c.data.packing), 'language', check=_check_tokens),
    'teacher_student': Entry(_teacher_student, 'vector'),
    'modular': Entry(lambda c: modular_arithmetic(
        c.data.modulus, c.data.operation, c.data.train_fraction,
        c.data.batch_size, c.seed), 'vector', check=_check_modular),
    'digits': Entry(lambda c: digits(c.data.batch_size, c.seed,
                                     c.data.white_noise, c.data.num_eval),
                    'image', 'sklearn', check=_check_digits),
    'tfds': Entry(lambda c: tfds_text(
        c.data.hf_name, c.data.seq_len, c.data.batch_size, c.data.max_bytes,
        c.seed), 'language', 'tensorflow_datasets', lambda d: 256,
                  _check_hf_name),
    'huggingface': Entry(lambda c: huggingface_text(
        c.data.hf_name, c.data.seq_len, c.data.batch_size, c.data.max_bytes,
        c.seed), 'language', 'datasets', lambda d: 256, _check_hf_name),
}
# Datasets of token sequences (a transformer's data; throughput in tokens).
LANGUAGE_DATASETS = tuple(n for n, e in DATASETS.items()
                          if e.kind == 'language')


def get_dataset(config: Any) -> Dataset:
  """The dataset named by ``config.data.name``, seeded by ``config.seed``."""
  name = config.data.name
  if name not in DATASETS:
    raise ValueError(f'data.name must be one of {tuple(DATASETS)}, '
                     f'got {name!r}')
  return DATASETS[name].build(config)


def _installed(package: str) -> bool:
  return importlib.util.find_spec(package) is not None


def check(config: Any) -> None:
  """Raises ``ConfigError`` for an invalid ``config.data`` field: the shared
  sizes, the optional package, then the selected dataset's own check (local
  text, token files, ...)."""
  d = config.data
  errors.one_of('data.name', d.name, DATASETS)
  for field in ('batch_size', 'seq_len', 'max_bytes', 'input_dim',
                'teacher_width', 'output_dim', 'num_train', 'modulus'):
    errors.integer(f'data.{field}', d[field], 1)
  errors.number('data.noise_std', d.noise_std, at_least=0)
  errors.one_of('data.packing', d.packing, documents.PACKINGS)
  errors.require(d.packing == 'concat' or d.name == 'tokens', 'data.packing',
                 d.packing, f'applies only to data.name=tokens, not {d.name!r}')
  entry = DATASETS[d.name]
  errors.require(entry.package is None or _installed(entry.package),
                 'data.name', d.name, f'needs the optional package '
                 f'{entry.package!r}: pip install -e ".[data]" (the embedded '
                 'datasets need nothing)')
  if entry.check is not None:
    entry.check(config)


class DataIterator:
  """Iterates ``dataset.train_batch(position)``; the position is its whole state.

  In a multi-process run each process keeps only its slice of the global
  batch (``process_index`` of ``process_count`` equal slices,
  ``dataset.train_slice``; token files read only those rows), so all
  processes together see exactly the batches of a single-process run.
  """

  def __init__(self, dataset: Dataset, position: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.dataset, self.position = dataset, position
    self.process_index, self.process_count = process_index, process_count

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self.process_count == 1:
      batch = self.dataset.train_batch(self.position)
    else:
      batch = self.dataset.train_slice(self.position, self.process_index,
                                       self.process_count)
    self.position += 1
    return batch

  def state(self) -> Dict[str, int]:
    return {'position': self.position}

  def restore(self, state: Dict[str, int]) -> None:
    self.position = int(state['position'])
