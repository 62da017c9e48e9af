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

from typing import Any, Dict

from dynamics.data.arrays import ArrayDataset, digits
from dynamics.data.base import Dataset, DatasetInfo
from dynamics.data.synthetic import (MODULAR_OPS, MarkovLanguage,
                                     modular_arithmetic, pow_mod_inverse,
                                     teacher_student)
from dynamics.data.text import (ByteText, default_text_dir, huggingface_text,
                                tfds_text)
from dynamics.data.tokens import TokenDataError, TokenFiles
from dynamics.types import Batch

__all__ = ['ArrayDataset', 'ByteText', 'DATASETS', 'DataIterator', 'Dataset',
           'DatasetInfo', 'LANGUAGE_DATASETS', 'MODULAR_OPS', 'MarkovLanguage', 'default_text_dir',
           'digits', 'get_dataset', 'huggingface_text', 'modular_arithmetic',
           'pow_mod_inverse', 'teacher_student', 'tfds_text', 'TokenDataError',
           'TokenFiles']

DATASETS = ('markov', 'bytes', 'tokens', 'teacher_student', 'modular', 'digits',
            'tfds', 'huggingface')
# Datasets of token sequences (a transformer's data; throughput in tokens).
LANGUAGE_DATASETS = ('markov', 'bytes', 'tokens', 'huggingface')


def get_dataset(config: Any) -> Dataset:
  """The dataset named by ``config.data.name``, seeded by ``config.seed``."""
  d, seed = config.data, config.seed
  if d.name == 'markov':
    return MarkovLanguage(d.vocab_size, d.seq_len, d.batch_size, d.temperature, seed)
  if d.name == 'bytes':
    return ByteText.from_directory(d.text_dir, d.seq_len, d.batch_size,
                                   d.max_bytes, seed)
  if d.name == 'tokens':
    return TokenFiles(d.path, d.seq_len, d.batch_size, seed,
                      config.model.vocab_size)
  if d.name == 'teacher_student':
    return teacher_student(d.input_dim, d.teacher_width, d.output_dim,
                           d.num_train, d.noise_std, d.batch_size, seed)
  if d.name == 'modular':
    return modular_arithmetic(d.modulus, d.operation, d.train_fraction,
                              d.batch_size, seed)
  if d.name == 'digits':
    return digits(d.batch_size, seed, d.white_noise, d.num_eval)
  if d.name == 'tfds':
    return tfds_text(d.hf_name, d.seq_len, d.batch_size, d.max_bytes, seed)
  if d.name == 'huggingface':
    return huggingface_text(d.hf_name, d.seq_len, d.batch_size, d.max_bytes,
                            seed)
  raise ValueError(f'data.name must be one of {DATASETS}, got {d.name!r}')


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
